"""The runtime imports one way: no module imports (even under TYPE_CHECKING) a module that imports it back,
and nothing outside runtime/ reaches into a private member of a runtime object."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNTIME = ROOT / "runtime"


def _runtime_imports(path: Path) -> set[str]:
    """Sibling runtime modules imported by ``path``, anywhere in the file (TYPE_CHECKING blocks included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                names.add(node.module.split(".")[0])
            elif node.level == 1:
                names.update(alias.name for alias in node.names)
            elif node.module and node.module.startswith("musicgen_onnx.runtime."):
                names.add(node.module.split(".")[2])
    return names


def test_runtime_import_graph_has_no_cycles():
    modules = {p.stem: p for p in RUNTIME.glob("*.py") if p.stem != "__init__"}
    graph = {name: _runtime_imports(path) & modules.keys() for name, path in modules.items()}
    state: dict[str, int] = {}  # 1 visiting, 2 done
    cycles = []

    def visit(name: str, stack: list[str]) -> None:
        state[name] = 1
        for dep in sorted(graph[name]):
            if state.get(dep) == 1:
                cycles.append(" -> ".join([*stack[stack.index(dep) :], dep]))
            elif dep not in state:
                visit(dep, [*stack, dep])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []
    # the facade is the top: nothing below it imports it
    assert not [name for name, deps in graph.items() if "model" in deps and name not in ("pipeline", "cli")]


PRIVATE_ATTRIBUTE = re.compile(r"\b(?:model|engine|runner|job|stream|chunks|mono|stereo|fixed|host|device)\._[a-z]")


def test_tests_and_benchmarks_use_no_private_runtime_members():
    offenders = []
    for folder in ("tests", "benchmarks", "serving"):
        for path in (ROOT / folder).glob("*.py"):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if PRIVATE_ATTRIBUTE.search(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == []


def test_the_runtime_and_the_serving_package_load_no_web_stack():
    """Inference nodes without the serve extra import the runtime; ``musicgen_onnx.serving`` itself (its config)
    loads neither Ray nor FastAPI until a server is built."""
    code = (
        "import sys, musicgen_onnx.runtime, musicgen_onnx.serving, musicgen_onnx.serving.formats, "
        "musicgen_onnx.serving.schema; "
        "print(sorted(m for m in ('ray', 'fastapi', 'starlette', 'torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]"
    runtime_sources = "\n".join(p.read_text() for p in RUNTIME.glob("*.py"))
    assert not re.search(r"^\s*(from|import) musicgen_onnx\.serving", runtime_sources, re.M)
