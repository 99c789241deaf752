"""Audio helpers for the runtime: resampling (soxr), WAV I/O (soundfile), prompt-audio preparation.

numpy + soundfile + soxr only (no scipy / torch on inference nodes). Audio arrays are float32 [channels, samples]
(channel-first, like transformers / EnCodec), never soundfile's [samples, channels].
"""

from __future__ import annotations

import contextlib
import os
from types import TracebackType

import numpy as np
import soundfile as sf
import soxr

__all__ = ["WavStreamWriter", "prepare_prompt_audio", "read_audio", "resample", "write_wav"]


def resample(audio: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample along the last axis with libsoxr (its "HQ" preset); float32 out, length round(n * target / orig).

    soxr is the reference for resampling quality, and measured faster and cleaner than the numpy
    polyphase filter this module had before (docs/design.md §13). Identity (a copy) when the rates are equal.
    """
    orig_sr, target_sr = int(orig_sr), int(target_sr)
    if orig_sr <= 0 or target_sr <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_sr} -> {target_sr}")
    x = np.asarray(audio, dtype=np.float32)
    if orig_sr == target_sr:
        return x.copy()
    lead, n_in = x.shape[:-1], x.shape[-1]
    if x.size == 0:
        return np.zeros((*lead, round(n_in * target_sr / orig_sr)), np.float32)
    rows = np.ascontiguousarray(x.reshape(-1, n_in).T)  # soxr wants [samples, channels]
    out = soxr.resample(rows, orig_sr, target_sr, quality="HQ")
    return np.ascontiguousarray(out.T, dtype=np.float32).reshape(*lead, out.shape[0])


def read_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Read any soundfile-supported file as (float32 [channels, samples], sample_rate)."""
    data, sr = sf.read(os.fspath(path), dtype="float32", always_2d=True)
    return np.ascontiguousarray(data.T), int(sr)


def _frames(audio: np.ndarray, channels: int | None = None) -> np.ndarray:
    """[channels, n] (or [n] for mono) float32 -> soundfile's [n, channels], validated."""
    a = np.asarray(audio, dtype=np.float32)
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2:
        raise ValueError(f"audio must be [channels, samples], got shape {a.shape}")
    if channels is not None and a.shape[0] != channels:
        raise ValueError(f"expected {channels} channels, got {a.shape[0]} (audio must be [channels, samples])")
    if not np.isfinite(a).all():
        raise ValueError("audio contains NaN or inf")
    return a.T


def _prepare_for_subtype(frames: np.ndarray, subtype: str) -> np.ndarray:
    # libsndfile wraps out-of-range floats when converting to integer PCM: clip first
    return np.clip(frames, -1.0, 1.0) if subtype.upper().startswith("PCM") else frames


def write_wav(path: str | os.PathLike, audio: np.ndarray, sr: int, *, subtype: str = "PCM_16") -> None:
    """Write float32 [channels, samples] as WAV; subtype "PCM_16" (default, clipped to [-1, 1]) or "FLOAT"."""
    frames = _frames(audio)
    sf.write(os.fspath(path), _prepare_for_subtype(frames, subtype), int(sr), subtype=subtype, format="WAV")


class WavStreamWriter:
    """Append [channels, n] chunks to a WAV file; after each write the header is updated and the data flushed,
    so a concurrent reader sees a valid, growing file (used for streaming generation)."""

    _SFC_UPDATE_HEADER_NOW = 0x1060  # libsndfile command: rewrite the header for the current length

    def __init__(self, path: str | os.PathLike, sr: int, channels: int, *, subtype: str = "PCM_16"):
        self.path = os.fspath(path)
        self.sr = int(sr)
        self.channels = int(channels)
        self.subtype = subtype
        self.frames_written = 0
        self._file: sf.SoundFile | None = sf.SoundFile(
            self.path, "w", samplerate=self.sr, channels=self.channels, subtype=subtype, format="WAV"
        )
        self._sync()

    def _sync(self) -> None:
        f = self._file
        assert f is not None
        # soundfile has no public API for this; fall back to a plain flush if its internals move
        with contextlib.suppress(AttributeError):
            sf._snd.sf_command(f._file, self._SFC_UPDATE_HEADER_NOW, sf._ffi.NULL, 0)
        f.flush()

    def write(self, chunk: np.ndarray) -> None:
        """Append a [channels, n] float32 chunk and make it visible to readers."""
        if self._file is None:
            raise ValueError("WavStreamWriter is closed")
        frames = _frames(chunk, self.channels)
        if frames.shape[0]:
            self._file.write(_prepare_for_subtype(frames, self.subtype))
            self.frames_written += frames.shape[0]
        self._sync()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    @property
    def closed(self) -> bool:
        return self._file is None

    def __enter__(self) -> WavStreamWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def prepare_prompt_audio(audio: np.ndarray, sr: int, *, target_sr: int, channels: int) -> np.ndarray:
    """Validate and convert a prompt to the model's input: float32 [B, channels, samples] at target_sr.

    Accepts [C, L] or [B, C, L] float audio with C in {1, 2}. A mono prompt for a stereo model is duplicated to
    both channels (as transformers' processor does); a stereo prompt for a mono model is downmixed by the mean
    of the two channels.
    """
    if channels not in (1, 2):
        raise ValueError(f"the model's channel count must be 1 or 2, got {channels}")
    a = np.asarray(audio)
    if not (np.issubdtype(a.dtype, np.floating)):
        raise ValueError(f"prompt audio must be float in [-1, 1], got dtype {a.dtype}; convert it first")
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise ValueError(
            f"prompt audio must be [channels, samples] or [batch, channels, samples], got rank {a.ndim} "
            f"(shape {a.shape}); use audio[None] for a 1-D mono signal"
        )
    if a.size == 0:
        raise ValueError(f"prompt audio is empty (shape {a.shape})")
    if a.shape[1] > 2:
        raise ValueError(
            f"prompt audio has {a.shape[1]} channels; at most 2 are supported "
            f"(expected [channels, samples]; was [samples, channels] passed?)"
        )
    if not np.isfinite(a).all():
        raise ValueError("prompt audio contains NaN or inf")
    if int(sr) <= 0:
        raise ValueError(f"sample rate must be positive, got {sr}")
    a = a.astype(np.float32, copy=False)
    if a.shape[1] != channels:
        a = np.repeat(a, 2, axis=1) if channels == 2 else a.mean(axis=1, keepdims=True, dtype=np.float32)
    return np.ascontiguousarray(resample(a, int(sr), int(target_sr)), dtype=np.float32)
