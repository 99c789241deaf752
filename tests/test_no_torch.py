"""The runtime must work on an inference node where torch and transformers do not exist."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import importlib.abc, json, sys

    BLOCKED = ("torch", "transformers", "musicgen_onnx.export", "musicgen_onnx.graphs")

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED or name.startswith(BLOCKED):
                raise ImportError(f"{name} is blocked: this is an inference node")
            return None

    sys.meta_path.insert(0, Block())
    try:
        import torch  # noqa: F401
        raise SystemExit("torch import was not blocked")
    except ImportError:
        pass

    from musicgen_onnx.runtime import MusicGen, pipeline
    from musicgen_onnx.runtime.cli import main

    model = MusicGen.load(sys.argv[1])
    audio = model.generate(["techno"], duration=0.4, seed=1)
    music = pipeline("text-to-audio", model)("ambient", max_new_tokens=9)
    code = main(["generate", sys.argv[1], "piano", "-o", sys.argv[2], "--duration", "0.3", "-q"])
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers"))
    print(json.dumps({"shape": list(audio.shape), "pipe": list(music["audio"].shape), "cli": code,
                      "loaded": loaded}))
    """
)


def test_generation_without_torch_or_transformers(exported_stereo, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(exported_stereo), str(tmp_path / "node.wav")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"shape": [1, 2, 12800], "pipe": [2, 6 * 640], "cli": 0, "loaded": []}
    assert (tmp_path / "node.wav").stat().st_size > 44


MELODY_SCRIPT = SCRIPT.split("from musicgen_onnx.runtime import")[0] + textwrap.dedent(
    """
    import numpy as np
    import soundfile as sf
    from musicgen_onnx.runtime import MusicGen
    from musicgen_onnx.runtime.cli import main

    tune = (0.3 * np.sin(np.arange(44100) * 2 * np.pi * 440 / 44100)).astype(np.float32)
    sf.write(sys.argv[2], tune, 44100)
    model = MusicGen.load(sys.argv[1])
    audio = model.generate(["techno"], melody=np.stack([tune, tune]), melody_sample_rate=44100, duration=0.4, seed=1)
    code = main(["generate", sys.argv[1], "piano", "--melody", sys.argv[2], "-o", sys.argv[3], "--duration", "0.3",
                 "-q"])
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers"))
    print(json.dumps({"shape": list(audio.shape), "cli": code, "loaded": loaded}))
    """
)


def test_melody_generation_without_torch_or_transformers(exported_melody_stereo, tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            MELODY_SCRIPT,
            str(exported_melody_stereo),
            str(tmp_path / "t.wav"),
            str(tmp_path / "o.wav"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"shape": [1, 2, 12800], "cli": 0, "loaded": []}
    assert (tmp_path / "o.wav").stat().st_size > 44
