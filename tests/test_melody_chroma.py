"""The runtime's numpy chromagram against an independent torch reference (torch.stft + transformers' filter bank)."""

from __future__ import annotations

import numpy as np
import pytest
from chroma_reference import HOP, MAX_SAMPLES, N_FFT, SAMPLING_RATE, reference_chroma
from musicgen_onnx.runtime.chroma import chroma_filter_bank, chroma_frames, chromagram, one_hot_chroma, tile_chroma
from musicgen_onnx.runtime.melody import window_melody
from transformers.audio_utils import chroma_filter_bank as hf_filter_bank

SR = SAMPLING_RATE


def ours(audio: np.ndarray) -> np.ndarray:
    """What the runtime feeds the prefix graph for a clip (before tiling): mono, cut to 30 s, chroma."""
    mono = np.asarray(audio, np.float32)
    mono = mono.mean(axis=0) if mono.ndim == 2 else mono
    return chromagram(window_melody(mono, 0, MAX_SAMPLES), sampling_rate=SR, n_fft=N_FFT, hop_length=HOP)


def tone(freqs, seconds: float, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(round(seconds * SR)) / SR
    return (amplitude * sum(np.sin(2 * np.pi * f * t) for f in np.atleast_1d(freqs))).astype(np.float32)


def test_filter_bank_is_librosas():
    np.testing.assert_allclose(chroma_filter_bank(SR, N_FFT, 12), hf_filter_bank(N_FFT, 12, SR, tuning=0), atol=1e-12)


CASES = {
    "C4": tone(261.63, 2.0),
    "F#3": tone(185.0, 1.3),
    "A5": tone(880.0, 0.8),
    "G-major chord": tone([196.0, 246.94, 293.66], 3.0),
    "note sequence": np.concatenate([tone(f, 0.4) for f in (261.63, 311.13, 349.23, 415.3, 466.16)]),
    "white noise": np.random.default_rng(0).standard_normal(5 * SR).astype(np.float32) * 0.1,
    "pink-ish noise": np.cumsum(np.random.default_rng(1).standard_normal(3 * SR)).astype(np.float32) * 1e-3,
    "silence": np.zeros(2 * SR, np.float32),
    "shorter than n_fft": tone(440.0, 0.2),
    "one sample": np.array([0.5], np.float32),
    "odd length": tone(329.63, 1.2345),
    "longer than 30 s": np.concatenate([tone(261.63, 20.0), tone(392.0, 12.5)]),
    "stereo": np.stack([tone(261.63, 1.5), tone(392.0, 1.5, 0.1)]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_chroma_matches_reference(name):
    audio = CASES[name]
    ref_norm = reference_chroma(audio, normalised=True)
    got = ours(audio)
    length = min(audio.shape[-1], MAX_SAMPLES)
    assert got.shape == ref_norm.shape == (chroma_frames(length, N_FFT, HOP), 12)
    np.testing.assert_allclose(got, ref_norm, atol=2e-4, rtol=0)
    np.testing.assert_array_equal(one_hot_chroma(got), reference_chroma(audio))


def test_tone_lands_on_its_pitch_class_and_silence_on_c():
    assert set(np.argmax(ours(CASES["C4"]), axis=-1)) == {0}
    assert set(np.argmax(ours(CASES["A5"]), axis=-1)) == {9}
    assert set(np.argmax(ours(CASES["silence"]), axis=-1)) == {0}
    assert ours(CASES["longer than 30 s"]).shape[0] == 235  # 30 s: the extractor's cut


def test_tile_is_repeat_then_cut():
    frames = np.eye(12, dtype=np.float32)[[3, 5, 7, 11, 0]]
    np.testing.assert_array_equal(tile_chroma(frames, 12), np.concatenate([frames, frames, frames])[:12])
    np.testing.assert_array_equal(tile_chroma(frames, 3), frames[:3])


def test_window_melody_wraps_like_audiocraft():
    clip = np.arange(10, dtype=np.float32)
    np.testing.assert_array_equal(window_melody(clip, 0, 6), clip[:6])
    np.testing.assert_array_equal(window_melody(clip, 7, 6), [7, 8, 9, 0, 1, 2])
    np.testing.assert_array_equal(window_melody(clip, 13, 20), np.roll(clip, -3))
