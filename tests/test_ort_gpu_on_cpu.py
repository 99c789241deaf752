"""The real onnxruntime-gpu build on a machine where CUDA cannot start (this CPU-only machine: no GPU, no CUDA or
cuDNN libraries), as on a mixed fleet that ships one image everywhere.

onnxruntime-gpu lists CUDAExecutionProvider as available there, then opens every session on the CPU. The CPU
tests simulate that listing (tests/test_runtime_errors.py); this one installs the real GPU wheel beside the test
environment (``pip install --target``, a few seconds from a package index or a local wheel house) and runs the
runtime against it in a subprocess, so the main environment keeps its CPU onnxruntime.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

# The newest onnxruntime-gpu on the index for this Python; the CPU build of the test environment is unaffected.
ORT_GPU_REQUIREMENT = os.environ.get("MUSICGEN_ONNX_TEST_ORT_GPU", "onnxruntime-gpu>=1.18")

SCRIPT = textwrap.dedent(
    """
    import json, logging, sys, warnings
    import onnxruntime as ort
    from musicgen_onnx.runtime import MusicGen, ProviderUnavailableError

    warnings.filterwarnings("ignore")
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("musicgen_onnx").addHandler(handler)
    out = {"ort_file": ort.__file__, "ort_version": ort.__version__, "available": ort.get_available_providers()}
    model = MusicGen.load(sys.argv[1])  # provider="auto"
    out["auto_device"] = model.device
    out["auto_providers"] = model.providers
    out["warnings"] = [r.getMessage() for r in records if r.levelno >= logging.WARNING]
    out["shape"] = list(model.generate("x", max_new_tokens=6).shape)
    try:
        MusicGen.load(sys.argv[1], provider="cuda")
        out["cuda_error"] = None
    except ProviderUnavailableError as exc:
        out["cuda_error"] = str(exc)
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def ort_gpu_site(tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("ort-gpu-site")
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), ORT_GPU_REQUIREMENT]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        pytest.skip(f"could not install {ORT_GPU_REQUIREMENT} (no package index reachable?): {done.stderr[-300:]}")
    return target


def test_real_onnxruntime_gpu_without_cuda(exported_stereo, ort_gpu_site, tmp_path):
    script = tmp_path / "check.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ort_gpu_site), os.environ.get("PYTHONPATH", "")]))
    env["CUDA_VISIBLE_DEVICES"] = ""  # a GPU machine must behave like the CPU-only node this test describes
    done = subprocess.run(
        [sys.executable, str(script), str(exported_stereo)], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["ort_file"].startswith(str(ort_gpu_site)), out["ort_file"]  # the GPU build, not the test env's CPU one
    assert "CUDAExecutionProvider" in out["available"]
    # provider="auto": every session on the CPU, said once, and generation works
    assert out["auto_device"] == "cpu" and out["auto_providers"] == ["CPUExecutionProvider"]
    fallbacks = [w for w in out["warnings"] if "could not start" in w]
    assert len(fallbacks) == 1 and "running on the CPU" in fallbacks[0], out["warnings"]
    assert out["shape"] == [1, 2, 640 * 3]
    # provider="cuda": a clear error at load that names what is missing, not onnxruntime's error at the first run
    assert out["cuda_error"] and "provider='cuda' requested" in out["cuda_error"]
    assert "cuDNN" in out["cuda_error"]
