"""runtime.audio: resampling vs scipy, WAV I/O, streaming writer, prompt preparation."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from musicgen_onnx.runtime.audio import WavStreamWriter, prepare_prompt_audio, read_audio, resample, write_wav

RATE_PAIRS = [(44100, 32000), (48000, 32000), (16000, 32000), (22050, 32000), (32000, 24000), (96000, 8000)]


def _tones(sr: int, n: int, freqs=(440.0, 1234.5, 3000.0)) -> np.ndarray:
    """Band-limited test signal (all tones below 0.8 x the lowest Nyquist used here), [2, n] float32."""
    t = np.arange(n) / sr
    left = sum(0.3 * np.sin(2 * np.pi * f * t + i) for i, f in enumerate(freqs))
    right = 0.5 * np.sin(2 * np.pi * 700.0 * t)
    return np.stack([left, right]).astype(np.float32)


@pytest.mark.parametrize(("orig", "target"), RATE_PAIRS)
def test_resample_reproduces_band_limited_signal(orig, target):
    n = 8000
    ours = resample(_tones(orig, n), orig, target)
    assert ours.dtype == np.float32
    expected = _tones(target, ours.shape[-1])
    edge = 64  # the signal starts and stops abruptly: compare the interior
    np.testing.assert_allclose(ours[..., edge:-edge], expected[..., edge:-edge], rtol=0, atol=3e-3)


@pytest.mark.parametrize(("orig", "target"), [(44100, 32000), (48000, 32000), (96000, 8000)])
def test_resample_removes_content_above_the_new_nyquist(orig, target):
    """A tone between the target's Nyquist and the source's must be filtered out, not folded back (aliased)."""
    n = orig  # one second
    t = np.arange(n) / orig
    freq = (target / 2 + orig / 2) / 2  # halfway between the two Nyquist frequencies
    tone = 0.5 * np.sin(2 * np.pi * freq * t)
    out = resample(tone[None].astype(np.float32), orig, target)
    interior = out[:, 200:-200]
    assert np.sqrt(np.mean(interior**2)) < 1e-3  # the input's RMS is 0.35


@pytest.mark.parametrize("n", [0, 1, 2, 7, 441, 1000, 32001])
@pytest.mark.parametrize(("orig", "target"), [*RATE_PAIRS, (44101, 32000)])
def test_resample_keeps_the_duration(n, orig, target):
    out = resample(np.zeros((1, 2, n), np.float32), orig, target)
    assert out.shape[:2] == (1, 2)
    assert abs(out.shape[-1] / target - n / orig) <= 1 / target  # same duration, to within one output sample


def test_resample_identity_and_shapes():
    x = np.random.default_rng(0).standard_normal((3, 100)).astype(np.float32)
    y = resample(x, 32000, 32000)
    np.testing.assert_array_equal(y, x)
    assert y is not x
    assert resample(x[0], 16000, 32000).shape == (200,)
    with pytest.raises(ValueError):
        resample(x, 0, 32000)


@pytest.mark.parametrize(("subtype", "atol"), [("PCM_16", 1 / 32767), ("FLOAT", 0.0)])
def test_write_read_round_trip(tmp_path, subtype, atol):
    x = _tones(32000, 3210) * 0.9
    path = tmp_path / "a.wav"
    write_wav(path, x, 32000, subtype=subtype)
    y, sr = read_audio(path)
    assert sr == 32000 and y.shape == x.shape and y.dtype == np.float32
    np.testing.assert_allclose(y, x, rtol=0, atol=atol)
    assert sf.info(str(path)).subtype == subtype


def test_write_wav_clips_pcm_and_rejects_nan(tmp_path):
    path = tmp_path / "c.wav"
    write_wav(path, np.array([[2.0, -2.0, 0.5]], np.float32), 16000)
    y, _ = read_audio(path)
    np.testing.assert_allclose(y, [[1.0, -1.0, 0.5]], atol=1 / 32767)  # no wrap-around
    with pytest.raises(ValueError, match="NaN"):
        write_wav(path, np.array([[np.nan]], np.float32), 16000)


def test_wav_stream_writer_file_grows_and_is_readable_midway(tmp_path):
    path = tmp_path / "s.wav"
    x = _tones(32000, 3000) * 0.5
    with WavStreamWriter(path, 32000, 2) as w:
        assert sf.info(str(path)).frames == 0
        w.write(x[:, :1000])
        mid, sr = read_audio(path)  # a separate reader while the writer is still open
        assert sr == 32000 and mid.shape == (2, 1000)
        np.testing.assert_allclose(mid, x[:, :1000], atol=1 / 32767)
        w.write(x[:, 1000:1000])  # empty chunk is fine
        w.write(x[:, 1000:])
        assert read_audio(path)[0].shape == (2, 3000)
        assert w.frames_written == 3000
        with pytest.raises(ValueError, match="channels"):
            w.write(x[:1])
    assert w.closed
    final, _ = read_audio(path)
    np.testing.assert_allclose(final, x, atol=1 / 32767)
    with pytest.raises(ValueError, match="closed"):
        w.write(x)


def test_prepare_prompt_audio_shapes_and_channels():
    mono = _tones(32000, 4000)[:1]
    out = prepare_prompt_audio(mono, 32000, target_sr=32000, channels=2)  # [C, L] -> [1, 2, L], duplicated
    assert out.shape == (1, 2, 4000) and out.dtype == np.float32
    np.testing.assert_array_equal(out[0, 0], out[0, 1])
    np.testing.assert_array_equal(out[0, 0], mono[0])

    stereo = _tones(44100, 4410)[None].repeat(3, axis=0)  # [B, 2, L]
    out = prepare_prompt_audio(stereo, 44100, target_sr=32000, channels=2)
    assert out.shape == (3, 2, 3200)
    np.testing.assert_allclose(out, resample(stereo, 44100, 32000))

    down = prepare_prompt_audio(stereo, 44100, target_sr=32000, channels=1)  # downmix by mean
    assert down.shape == (3, 1, 3200)
    np.testing.assert_allclose(down[:, 0], out.mean(axis=1), atol=1e-6)

    assert prepare_prompt_audio(mono.astype(np.float64), 32000, target_sr=32000, channels=1).dtype == np.float32


@pytest.mark.parametrize(
    ("audio", "match"),
    [
        (np.zeros(100, np.float32), "rank"),
        (np.zeros((1, 1, 1, 100), np.float32), "rank"),
        (np.zeros((1, 0), np.float32), "empty"),
        (np.zeros((0, 1, 10), np.float32), "empty"),
        (np.zeros((100, 2), np.float32), "channels"),
        (np.zeros((3, 100), np.float32), "channels"),
        (np.array([[0.0, np.nan]], np.float32), "NaN"),
        (np.array([[0.0, np.inf]], np.float32), "NaN or inf"),
        (np.zeros((1, 100), np.int16), "float"),
    ],
)
def test_prepare_prompt_audio_errors(audio, match):
    with pytest.raises(ValueError, match=match):
        prepare_prompt_audio(audio, 32000, target_sr=32000, channels=2)


def test_prepare_prompt_audio_bad_model_channels():
    with pytest.raises(ValueError, match="1 or 2"):
        prepare_prompt_audio(np.zeros((1, 10), np.float32), 32000, target_sr=32000, channels=3)
