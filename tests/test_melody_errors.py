"""Bad melody input gets clear errors (before any heavy work), like bad prompt audio; the CLI's --melody."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from musicgen_onnx.runtime import MusicGen
from musicgen_onnx.runtime.cli import main

SR = 32000
GOOD = (0.3 * np.sin(np.arange(SR) / 10)).astype(np.float32)


@pytest.fixture(scope="module")
def model(exported_melody_stereo):
    return MusicGen.load(exported_melody_stereo, provider="cpu")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"melody": np.full(SR, np.nan, np.float32)}, "NaN or inf"),
        ({"melody": np.zeros(0, np.float32)}, "empty"),
        ({"melody": np.zeros((2, 0), np.float32)}, "empty"),
        ({"melody": np.zeros((0, 1, 10), np.float32)}, "empty"),
        ({"melody": []}, "empty list"),
        ({"melody": np.zeros((3, SR), np.float32)}, "3 channels"),
        ({"melody": np.zeros((SR, 2), np.float32)}, "32000 channels.*samples, channels"),
        ({"melody": np.zeros((1, 1, 1, SR), np.float32)}, "batch, channels, samples"),
        ({"melody": (GOOD * 32767).astype(np.int16)}, "float audio"),
        ({"melody": [GOOD, np.ones((2, 5), np.int32)]}, r"melody\[1\] must be float"),
        ({"melody": GOOD, "melody_sample_rate": "44100"}, "integer number of Hz, got str"),
        ({"melody": GOOD, "melody_sample_rate": 44100.5}, "positive integer"),
        ({"melody": GOOD, "melody_sample_rate": 0}, "positive integer"),
        ({"melody": GOOD, "melody_sample_rate": True}, "got bool"),
        ({"melody": [GOOD, GOOD, GOOD], "texts": ["a", "b"]}, "3 melodies for a batch of 2"),
    ],
)
def test_bad_melody(model, kwargs, match):
    texts = kwargs.pop("texts", "jazz")
    with pytest.raises(ValueError, match=match):
        model.generate(texts, max_new_tokens=8, **kwargs)


def test_float_sample_rate_with_integer_value_is_fine(model):
    assert model.generate("jazz", melody=GOOD, melody_sample_rate=32000.0, max_new_tokens=8).shape == (1, 2, 5 * 640)


def test_melody_batch_sets_the_batch_without_texts(model):
    audio = model.generate(None, melody=[GOOD, GOOD[: SR // 3]], max_new_tokens=8)
    assert audio.shape == (2, 2, 5 * 640)


def test_melody_on_a_text_model_is_an_error(exported_mono):
    text_model = MusicGen.load(exported_mono, provider="cpu")
    with pytest.raises(ValueError, match="not a melody checkpoint"):
        text_model.generate("jazz", melody=GOOD, max_new_tokens=8)


def test_cli_melody(exported_melody_stereo, tmp_path, capsys):
    tune = tmp_path / "tune.wav"
    sf.write(tune, np.stack([GOOD, GOOD], axis=1), 44100)
    out = tmp_path / "jazz.wav"
    args = ["generate", str(exported_melody_stereo), "jazz", "--melody", str(tune), "--duration", "0.5", "-q"]
    assert main([*args, "-o", str(out), "--seed", "1"]) == 0
    audio, sr = sf.read(out)
    assert sr == 32000 and audio.shape == (16000, 2)
    assert main([*args[:3], "--melody", str(tmp_path / "missing.wav"), "-o", str(out)]) == 2
    assert "melody file not found" in capsys.readouterr().err
