"""Shared helpers of the melody tests: a synthetic tune, transformers' generate with its codes, reference features."""

from __future__ import annotations

from unittest import mock

import numpy as np
import torch
from chroma_reference import reference_chroma

SR = 32000
TEXT = "an upbeat rock song with electric guitars"


def tune(seconds: float, sr: int = SR, notes=(261.63, 329.63, 392.0, 493.88), channels: int = 0) -> np.ndarray:
    """A melody: one note per 0.4 s cycling through ``notes`` plus a little noise; [L], or [channels, L]."""
    n = round(seconds * sr)
    t = np.arange(n) / sr
    freq = np.asarray(notes)[(t / 0.4).astype(int) % len(notes)]
    wave = 0.4 * np.sin(2 * np.pi * np.cumsum(freq) / sr) + 0.01 * np.random.default_rng(n).standard_normal(n)
    wave = wave.astype(np.float32)
    if channels:
        return np.stack([wave * (1.0 - 0.4 * c) for c in range(channels)])
    return wave


def hf_generate(hf, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """transformers' audio and the codes it decoded ([B, K, F], stereo rows re-interleaved)."""
    with mock.patch.object(hf.audio_encoder, "decode", wraps=hf.audio_encoder.decode) as spy, torch.no_grad():
        audio = hf.generate(**kwargs)
    parts = [call.args[0][0].numpy() for call in spy.call_args_list]
    codes = np.empty((parts[0].shape[0], 4 * len(parts), parts[0].shape[-1]), dtype=np.int64)
    for c, part in enumerate(parts):
        codes[:, c :: len(parts)] = part
    return audio.numpy(), codes


def features(*melodies: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack([reference_chroma(m) for m in melodies]))
