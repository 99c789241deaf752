"""An independent chromagram for tests: torch.stft + transformers' chroma filter bank (no torchaudio).

Follows MusicgenMelodyFeatureExtractor (transformers 5.24) step by step in torch, float32 as it runs:
mean of the channels, cut to 30 s, symmetric zero pad to n_fft, torchaudio-style power spectrogram
(|STFT|^2 / sum(window^2), periodic Hann, centred, reflect), filter bank, inf-norm (eps 1e-6), one-hot argmax.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers.audio_utils import chroma_filter_bank

SAMPLING_RATE = 32000
N_FFT = 16384
HOP = 4096
MAX_SAMPLES = 30 * SAMPLING_RATE


def reference_chroma(audio: np.ndarray, *, normalised: bool = False) -> np.ndarray:
    """[L] or [C, L] float at 32 kHz -> one-hot [frames, 12] float32 (or the normalised chroma)."""
    wav = torch.as_tensor(np.asarray(audio, np.float32))
    if wav.ndim == 2:
        wav = wav.mean(dim=0)
    wav = wav[:MAX_SAMPLES]
    if wav.shape[-1] < N_FFT:
        pad = N_FFT - wav.shape[-1]
        wav = torch.nn.functional.pad(wav, (pad // 2, pad // 2 + pad % 2))
    window = torch.hann_window(N_FFT)
    stft = torch.stft(
        wav, N_FFT, HOP, N_FFT, window=window, center=True, pad_mode="reflect", normalized=False, return_complex=True
    )
    power = stft.abs() ** 2 / window.pow(2).sum()
    filters = torch.from_numpy(chroma_filter_bank(N_FFT, 12, SAMPLING_RATE, tuning=0)).float()
    raw = filters @ power  # [12, frames]
    norm = torch.nn.functional.normalize(raw, p=float("inf"), dim=0, eps=1e-6).T  # [frames, 12]
    if normalised:
        return norm.numpy()
    out = torch.zeros_like(norm)
    out.scatter_(-1, norm.argmax(-1, keepdim=True), 1.0)
    return out.numpy()
