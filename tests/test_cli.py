"""``musicgen-onnx generate``: files written, numbering, errors as messages (not stack traces)."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from musicgen_onnx.runtime.audio import write_wav
from musicgen_onnx.runtime.cli import main


def test_generate_one_prompt(exported_stereo, tmp_path, capsys):
    out = tmp_path / "song.wav"
    assert main(["generate", str(exported_stereo), "warm synth pads", "-o", str(out), "--duration", "0.5"]) == 0
    audio, sr = sf.read(out, always_2d=True)
    assert sr == 32000 and audio.shape == (16000, 2)
    printed = capsys.readouterr().out
    assert str(out) in printed and "real-time factor" in printed


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ([], dict(cuda_graph=None, device_sampling=None, allow_spinning=None, threads=None)),
        (
            ["--no-cuda-graph", "--host-sampling", "--no-spin", "--threads", "1"],
            dict(cuda_graph=False, device_sampling=False, allow_spinning=False, threads=1),
        ),
    ],
)
def test_generate_switches_reach_the_model(exported_stereo, tmp_path, monkeypatch, flags, expected):
    """The CLI's device switches must arrive at MusicGen.load, and the loaded model must run with them."""
    from musicgen_onnx.runtime import MusicGen

    loaded = []
    real_load = MusicGen.load.__func__

    def spy(cls, *args, **kwargs):
        loaded.append((kwargs, real_load(cls, *args, **kwargs)))
        return loaded[-1][1]

    monkeypatch.setattr(MusicGen, "load", classmethod(spy))
    out = tmp_path / "plain.wav"
    args = ["generate", str(exported_stereo), "drums", "-o", str(out), "--duration", "0.3", "--provider", "cpu"]
    assert main([*args, *flags]) == 0
    ((kwargs, model),) = loaded
    assert {k: kwargs[k] for k in expected} == expected
    assert not model.cuda_graph and not model.device_sampling  # on the CPU both stay off
    assert sf.read(out, always_2d=True)[0].shape == (9600, 2)


def test_generate_several_prompts_numbered_and_greedy(exported_mono, tmp_path):
    out = tmp_path / "clip.wav"
    args = ["generate", str(exported_mono), "a", "b c", "-o", str(out), "--duration", "0.3", "--greedy", "--seed", "1"]
    assert main(args) == 0
    for i in range(2):
        audio, _ = sf.read(tmp_path / f"clip_{i}.wav", always_2d=True)
        assert audio.shape == (9600, 1)


def test_generate_with_prompt_audio(exported_stereo, tmp_path):
    prompt = tmp_path / "prompt.wav"
    write_wav(prompt, (0.1 * np.sin(np.arange(8000) / 10.0))[None].astype(np.float32), 16000)  # mono, 16 kHz
    out = tmp_path / "cont.wav"
    args = [
        "generate",
        str(exported_stereo),
        "jazz",
        "--prompt-audio",
        str(prompt),
        "-o",
        str(out),
        "--duration",
        "0.9",
    ]
    assert main(args) == 0
    audio, _ = sf.read(out, always_2d=True)
    assert audio.shape == (28800, 2)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--duration", "-1"], "positive number"),
        (["--top-k", "-1"], "top_k must be"),
        (["--top-p", "0"], "top_p=0 is ambiguous"),
        (["--seed", "-1"], "seed must be a non-negative integer"),
        (["--prompt-audio", "/nonexistent.wav"], "prompt audio not found"),
    ],
)
def test_generate_errors_are_messages(exported_stereo, tmp_path, capsys, extra, message):
    assert main(["generate", str(exported_stereo), "x", "-o", str(tmp_path / "o.wav"), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_generate_missing_model_dir(tmp_path, capsys):
    assert main(["generate", str(tmp_path / "nope"), "x"]) == 2
    assert "not found" in capsys.readouterr().err


def test_usage(capsys):
    assert main([]) == 2
    assert main(["--help"]) == 0
    assert main(["frobnicate"]) == 2
    assert "unknown command" in capsys.readouterr().err


def test_generate_stream_with_window_and_chunk_flags(exported_mono, tmp_path, capsys):
    out = tmp_path / "s.wav"
    args = ["generate", str(exported_mono), "ambient", "-o", str(out), "--duration", "6", "--stream"]
    args += ["--chunk-seconds", "0.5", "--window", "4", "--extend-stride", "2", "-q"]
    assert main(args) == 0
    audio, _ = sf.read(out, always_2d=True)
    assert audio.shape == (6 * 32000, 1)
    assert "time_to_first_audio" in capsys.readouterr().out
    bad = ["generate", str(exported_mono), "x", "-o", str(tmp_path / "bad.wav"), "--stream", "--chunk-seconds", "0.001"]
    assert main(bad) == 2
    assert "chunk_seconds must be at least one frame" in capsys.readouterr().err
    assert not (tmp_path / "bad.wav").exists()


def test_progress_bar_counts_frames(exported_mono, tmp_path, capsys, monkeypatch):
    """The bar reports audio frames and frames per second (it once labelled frames/s as "steps/s")."""
    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    out = tmp_path / "bar.wav"
    assert main(["generate", str(exported_mono), "x", "-o", str(out), "--duration", "0.3"]) == 0
    last = capsys.readouterr().err.strip().split("\r")[-1]
    assert "15/15 frames" in last and last.endswith("frames/s"), last  # 0.3 s at 50 frames/s
    assert "steps" not in last
