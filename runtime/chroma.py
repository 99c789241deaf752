"""Chromagram of a melody in numpy, as MusicgenMelodyFeatureExtractor computes it (no librosa, torch, torchaudio).

For one mono clip at the model's rate (32 kHz), at most ``max_seconds`` (30 s) long:

1. shorter than ``n_fft`` (16384 samples): zero-padded symmetrically to ``n_fft`` (the extra sample on the right);
2. power spectrogram: centred frames (reflect padding of n_fft / 2 on both sides), periodic Hann window of
   ``n_fft`` samples, hop ``hop_length`` (4096), |FFT|^2 divided by the window's energy (torchaudio's
   ``normalized=True``); frames = 1 + L // hop;
3. librosa's chroma filter bank (``chroma_filter_bank``: 12 x (n_fft / 2 + 1), A440, starting at C) times the
   spectrogram; inf-norm per frame (eps 1e-6) does not change the winner;
4. one-hot of the argmax per frame, ties to the lowest bin (silence is C, bin 0).

The spectrogram is computed in float64; transformers computes it in float32, so a frame whose two best bins
are within float32 rounding of each other could pick differently (never seen on tones, noise or silence).
"""

from __future__ import annotations

import numpy as np

__all__ = ["chroma_filter_bank", "chroma_frames", "chromagram", "one_hot_chroma", "tile_chroma"]

#: Frames per FFT batch: bounds the float64 temporaries (64 x 16384 x 16 B = 16 MB).
_FRAMES_PER_BLOCK = 64


def chroma_filter_bank(
    sampling_rate: int, n_fft: int, num_chroma: int = 12, tuning: float = 0.0, *, center_octave: float = 5.0
) -> np.ndarray:
    """librosa's chroma filters (``librosa.filters.chroma`` defaults: ctroct 5, octwidth 2, L2-normalised
    columns, base C), [num_chroma, n_fft // 2 + 1] float64.

    Every FFT bin f > 0 sits at fractional chroma position 12 * log2(f / (A440 / 16)); a Gaussian bump of
    half-width (bin spacing in chroma) is placed on each chroma around it, wrapped to one octave; columns are
    L2-normalised and weighted by a Gaussian over octaves centred on ``center_octave`` (2 octaves wide).
    """
    freqs = np.linspace(0.0, sampling_rate, n_fft, endpoint=False)[1:]
    reference = 440.0 * 2.0 ** (tuning / num_chroma) / 16.0
    position = num_chroma * np.log2(freqs / reference)
    # the 0 Hz bin: 1.5 octaves below bin 1 (so it is spread broadly)
    position = np.concatenate(([position[0] - 1.5 * num_chroma], position))
    width = np.concatenate((np.maximum(np.diff(position), 1.0), [1.0]))
    half = np.round(num_chroma / 2.0)
    offset = position[None, :] - np.arange(num_chroma, dtype=np.float64)[:, None]
    offset = np.remainder(offset + half + 10 * num_chroma, num_chroma) - half
    filters = np.exp(-0.5 * (2.0 * offset / width[None, :]) ** 2)
    filters /= np.sqrt(np.sum(filters**2, axis=0, keepdims=True))
    filters *= np.exp(-0.5 * ((position / num_chroma - center_octave) / 2.0) ** 2)[None, :]
    filters = np.roll(filters, -3 * (num_chroma // 12), axis=0)  # start at C rather than A
    return np.ascontiguousarray(filters[:, : n_fft // 2 + 1])


def _periodic_hann(n: int) -> np.ndarray:
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)


def chroma_frames(length: int, n_fft: int, hop_length: int) -> int:
    """Frames the extractor gives for ``length`` samples (after the pad to n_fft)."""
    return 1 + max(int(length), n_fft) // hop_length


def chromagram(
    audio: np.ndarray,
    *,
    sampling_rate: int,
    n_fft: int,
    hop_length: int,
    num_chroma: int = 12,
    filters: np.ndarray | None = None,
) -> np.ndarray:
    """Normalised chroma [frames, num_chroma] float64 of a mono clip [L] (already at ``sampling_rate``)."""
    x = np.asarray(audio, dtype=np.float64).reshape(-1)
    if x.size < n_fft:
        pad = n_fft - x.size
        x = np.pad(x, (pad // 2, pad // 2 + pad % 2))
    half = n_fft // 2
    padded = np.pad(x, (half, half), mode="reflect")
    frames = 1 + x.size // hop_length
    window = _periodic_hann(n_fft)
    energy = float(np.sum(window**2))
    if filters is None:
        filters = chroma_filter_bank(sampling_rate, n_fft, num_chroma)
    raw = np.empty((frames, num_chroma), dtype=np.float64)
    for start in range(0, frames, _FRAMES_PER_BLOCK):
        stop = min(frames, start + _FRAMES_PER_BLOCK)
        index = (np.arange(start, stop) * hop_length)[:, None] + np.arange(n_fft)[None, :]
        spectrum = np.fft.rfft(padded[index] * window[None, :], axis=-1)
        power = (spectrum.real**2 + spectrum.imag**2) / energy
        raw[start:stop] = power @ filters.T
    peak = np.max(np.abs(raw), axis=-1, keepdims=True)
    return raw / np.maximum(peak, 1e-6)


def one_hot_chroma(chroma: np.ndarray) -> np.ndarray:
    """[frames, C] -> one-hot float32 of the argmax per frame (first maximum on ties, like torch)."""
    out = np.zeros(chroma.shape, dtype=np.float32)
    out[np.arange(chroma.shape[0]), np.argmax(chroma, axis=-1)] = 1.0
    return out


def tile_chroma(one_hot: np.ndarray, length: int) -> np.ndarray:
    """Frame i of the result is frame i % F: transformers' repeat-then-cut to ``chroma_length`` frames."""
    frames = one_hot.shape[0]
    return np.ascontiguousarray(one_hot[np.arange(length) % frames])
