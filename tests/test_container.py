"""The Dockerfiles' commands checked against the package, without a container engine (docs/design.md §22).

Where an engine runs, ``.ci/run`` also builds the CPU image and smoke-tests it (``.ci/container_smoke.sh``);
here the files are parsed: the entrypoint is the package's console script and its ``serve`` parser accepts the
flags used, the extras installed exist, every copied path exists, nothing pulls in torch, the port and health
check match the server's.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from musicgen_onnx.runtime.cli import OPTIONAL_COMMANDS
from musicgen_onnx.serving.auth import KEYS_FILE_ENV
from musicgen_onnx.serving.cli import build_parser

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the copy pip vendors
    from pip._vendor import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
#: Dockerfile -> the extras it installs
IMAGES = {"Dockerfile": {"serve"}, "Dockerfile.cuda": {"gpu", "serve"}}


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    stage: int  # index of the FROM it belongs to


def parse(path: Path) -> list[Instruction]:
    """Dockerfile instructions with continuation lines joined and comments dropped; ``${ARG}`` substituted
    with the ARG defaults declared before the first FROM or in the stage."""
    lines, current = [], ""
    for raw in path.read_text().splitlines():
        if raw.lstrip().startswith("#") and not current:
            continue
        if raw.lstrip().startswith("#"):
            continue  # a comment inside a continued instruction
        if raw.rstrip().endswith("\\"):
            current += raw.rstrip()[:-1] + " "
            continue
        current += raw
        if current.strip():
            lines.append(current.strip())
        current = ""
    out, stage, args = [], -1, {}
    for line in lines:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "ARG":
            name, _, default = rest.strip().partition("=")
            if default or name not in args:
                args[name] = default
        rest = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), rest)
        if keyword == "FROM":
            stage += 1
        out.append(Instruction(keyword, rest.strip(), stage))
    return out


def _only(instructions: list[Instruction], keyword: str) -> Instruction:
    found = [i for i in instructions if i.keyword == keyword]
    assert len(found) == 1, (keyword, found)
    return found[0]


@pytest.fixture(params=sorted(IMAGES))
def dockerfile(request) -> tuple[str, list[Instruction]]:
    return request.param, parse(ROOT / request.param)


def test_the_entrypoint_is_the_console_script_serving_the_mounted_model(dockerfile):
    name, instructions = dockerfile
    entrypoint = json.loads(_only(instructions, "ENTRYPOINT").args)  # exec form: signals reach the server
    script, command, *rest = entrypoint
    assert script in PYPROJECT["project"]["scripts"]
    module, function = PYPROJECT["project"]["scripts"][script].split(":")
    assert function == "main" and module == "musicgen_onnx.runtime.cli"
    assert command in OPTIONAL_COMMANDS and OPTIONAL_COMMANDS[command][0] == "musicgen_onnx.serving.cli"
    args = build_parser().parse_args(rest)  # argparse exits on a flag the server does not know
    assert str(args.model_dir) == "/model" and args.host == "0.0.0.0" and not args.insecure
    if name == "Dockerfile.cuda":
        assert args.provider == "cuda"
    # the documented way to pass keys: the serve parser reads the variable when --api-keys is not given
    with pytest.MonkeyPatch.context() as env:
        env.setenv(KEYS_FILE_ENV, "/keys/keys.json")
        assert str(build_parser().parse_args(rest).api_keys) == "/keys/keys.json"
    assert json.loads(_only(instructions, "CMD").args) == []  # docker run arguments are added to the entrypoint
    assert KEYS_FILE_ENV in (ROOT / name).read_text()


def test_the_extras_installed_exist_and_nothing_brings_torch(dockerfile):
    name, instructions = dockerfile
    runs = " ".join(i.args for i in instructions if i.keyword == "RUN")
    installed = re.findall(r"musicgen_onnx-\*\.whl\)\[([\w,]+)\]", runs)
    assert len(installed) == 1, runs
    extras = set(installed[0].split(","))
    assert extras == IMAGES[name] and extras <= set(PYPROJECT["project"]["optional-dependencies"])
    assert "torch" not in runs and "transformers" not in runs and "[export" not in runs
    for extra in extras:  # and the extras themselves do not pull torch in
        assert not any(
            dep.startswith(("torch", "transformers")) for dep in PYPROJECT["project"]["optional-dependencies"][extra]
        )
    final = [i for i in instructions if i.stage == max(x.stage for x in instructions)]
    base = final[0].args
    if name == "Dockerfile":
        assert re.fullmatch(r"python:3\.1[0-9]-slim", base), base
    else:
        assert re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-cudnn-runtime-ubuntu\d+\.\d+", base), base
        pinned = re.findall(r'"(onnxruntime-gpu==[\d.]+)"', runs)
        assert pinned and len(set(pinned)) == 1  # the version that goes with the CUDA base, installed last


def test_every_copied_path_exists_and_the_wheel_has_its_packages(dockerfile):
    _, instructions = dockerfile
    copied = set()
    for copy in (i for i in instructions if i.keyword == "COPY"):
        parts = shlex.split(copy.args)
        if any(p.startswith("--from=") for p in parts):
            continue  # from a build stage
        sources = [p for p in parts[:-1] if not p.startswith("--")]
        for source in sources:
            assert (ROOT / source).exists(), source
            copied.add(source.rstrip("/"))
    package_dirs = set(PYPROJECT["tool"]["setuptools"]["package-dir"].values())
    top = {d.split("/")[0] for d in package_dirs}
    assert top <= copied, top - copied  # setuptools needs every package directory to build the wheel
    assert PYPROJECT["project"]["readme"] in copied and "pyproject.toml" in copied
    ignored = (ROOT / ".dockerignore").read_text().split()
    for path in copied:
        assert f"!{path}" in ignored or f"!{path}/" in ignored, path  # in the build context


def test_port_and_health_check_match_the_server(dockerfile):
    _, instructions = dockerfile
    port = build_parser().get_default("port")
    assert _only(instructions, "EXPOSE").args == str(port)
    check = _only(instructions, "HEALTHCHECK").args
    assert f"http://127.0.0.1:{port}/healthz" in check  # /healthz needs no key
    assert _only(instructions, "USER").args == "musicgen"  # not root


def test_ci_builds_the_image_only_where_an_engine_runs():
    run = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"if docker info > /dev/null 2>&1; then\s+bash \.ci/container_smoke\.sh\s+fi", run)
    smoke = ROOT / ".ci" / "container_smoke.sh"
    assert subprocess.run(["bash", "-n", str(smoke)], capture_output=True, timeout=30).returncode == 0
    text = smoke.read_text()
    assert 'docker build -t "$image" -f Dockerfile .' in text and KEYS_FILE_ENV in text
    assert "serve-keys --file" in text and "401" in text


def test_the_readme_documents_the_container():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Container", 1)[1].split("\n## ", 1)[0]
    for text in ("docker build", "Dockerfile.cuda", "/model", KEYS_FILE_ENV, "serve-keys", "--insecure"):
        assert text in section, text
