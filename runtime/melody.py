"""Melody conditioning for the MusicGen-Melody exports: melody input checks, chroma prefix, prefix decoder runner.

A melody checkpoint's decoder has no cross-attention: its first call gets the prefix
``cat([chroma_length projected one-hot chroma frames, text states])`` before the decoder start column, and the
cache then holds prefix + tokens (manifest ``conditioning == "prefix"``). What transformers 5.24 does, and so
what this module reproduces:

- **melody**: mono (channels averaged) at the model's rate, at most 30 s; its chromagram (``chroma``) is one-hot
  per frame and its frames are repeated to ``chroma_length`` (235 = 30 s). No melody: the "null melody", every
  frame on bin 0 (C), which the projection does not map to zero.
- **text**: the text encoder's states (x mask). No text: one zero position (transformers feeds the decoder
  start id to T5 with a zero mask).
- **classifier-free guidance**: the unconditional rows get zero text states (same length) and the null melody.
- **batches**: transformers pads the texts and its decoder attends to the padded zeros, and its feature
  extractor pads the melodies with silence, so a row's result depends on the others. Here every row is
  computed as it would be alone: each melody gets its own chromagram, and the padded text positions are masked
  (``attention_bias``) with each row's sinusoid positions shifted to what they would be without padding.
- **long-form**: audiocraft re-slices the melody for each window at the window's time offset, wrapping around
  (``window_melody``); window 0 is the melody as given (what transformers uses).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort

from .audio import resample
from .chroma import chroma_filter_bank, chromagram, one_hot_chroma, tile_chroma

if TYPE_CHECKING:
    from collections.abc import Callable

    from .manifest import Manifest, MelodySpec

logger = logging.getLogger("musicgen_onnx")

__all__ = ["MelodyCondition", "MelodyDecoderRunner", "prepare_melody", "resolve_melody_batch", "window_melody"]


def _check_rate(sample_rate: object, default: int) -> int:
    if sample_rate is None:
        return default
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer, float, np.floating)):
        raise ValueError(f"melody_sample_rate must be an integer number of Hz, got {type(sample_rate).__name__}")
    if not float(sample_rate).is_integer() or sample_rate <= 0:
        raise ValueError(f"melody_sample_rate must be a positive integer number of Hz, got {sample_rate!r}")
    return int(sample_rate)


def _check_clip(clip: object, where: str) -> np.ndarray:
    """One melody, [L] or [C, L] float -> mono float32 [L]."""
    a = np.asarray(clip)
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"{where} must be float audio in [-1, 1], got dtype {a.dtype}; convert it first")
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2:
        raise ValueError(f"{where} must be [samples] or [channels, samples], got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{where} is empty (shape {a.shape})")
    if a.shape[0] > 2:
        raise ValueError(
            f"{where} has {a.shape[0]} channels; at most 2 are supported "
            "(expected [channels, samples]; was [samples, channels] passed?)"
        )
    if not np.isfinite(a).all():
        raise ValueError(f"{where} contains NaN or inf")
    return a.astype(np.float32, copy=False).mean(axis=0, dtype=np.float32)


def prepare_melody(melody: object, sample_rate: object, manifest: Manifest) -> list[np.ndarray]:
    """Validate melody input and return one mono float32 clip per row at the model's rate.

    ``melody``: [L] or [C, L] (one clip), [B, C, L] (a batch), or a list of [L] / [C, L] clips (a batch of
    different lengths); float audio, C <= 2 (channels are averaged). ``sample_rate`` (Hz, default: the model's)
    applies to every clip. Clips longer than the extractor's 30 s are kept whole: each window takes its slice.
    """
    spec = manifest.melody
    if spec is None:
        raise ValueError(
            f"{manifest.source} is not a melody checkpoint: melody conditioning needs a musicgen-melody export "
            "(facebook/musicgen-melody, -melody-large, -stereo-melody, -stereo-melody-large)"
        )
    sr = _check_rate(sample_rate, spec.sampling_rate)
    if isinstance(melody, (list, tuple)):
        if not melody:
            raise ValueError("melody is an empty list")
        clips = [_check_clip(c, f"melody[{i}]") for i, c in enumerate(melody)]
    else:
        a = np.asarray(melody)
        if a.ndim == 3:
            clips = [_check_clip(a[i], f"melody[{i}]") for i in range(a.shape[0])] if a.shape[0] else []
            if not clips:
                raise ValueError(f"melody is empty (shape {a.shape})")
        elif a.ndim in (1, 2):
            clips = [_check_clip(a, "melody")]
        else:
            raise ValueError(
                f"melody must be [samples], [channels, samples] or [batch, channels, samples], got shape {a.shape}"
            )
    return [resample(c, sr, spec.sampling_rate) if sr != spec.sampling_rate else c for c in clips]


def resolve_melody_batch(clips: list[np.ndarray], batch: int, texts_given: bool, prompt: np.ndarray | None) -> int:
    """The generation's batch size with melodies: one melody for all rows, or one per row."""
    if not texts_given and prompt is None:
        return len(clips)
    if len(clips) not in (1, batch):
        raise ValueError(f"got {len(clips)} melodies for a batch of {batch}: give one melody for all, or one per row")
    return batch


def window_melody(clip: np.ndarray, start_sample: int, max_samples: int) -> np.ndarray:
    """The melody a long-form window starting at ``start_sample`` sees: ``min(L, max_samples)`` samples from
    that offset, wrapping around (audiocraft's ``positions % wav_length``); window 0 is the clip cut to 30 s."""
    length = clip.shape[-1]
    if start_sample == 0:
        return clip[:max_samples]
    return clip[(start_sample + np.arange(min(length, max_samples))) % length]


class MelodyCondition:
    """Text states (computed once) and melodies; builds each window's prefix for the decoder."""

    def __init__(
        self,
        manifest: Manifest,
        encode_text: Callable,
        prefix_session: ort.InferenceSession,
        texts: list[str] | None,
        batch: int,
        clips: list[np.ndarray] | None,
    ) -> None:
        spec: MelodySpec = manifest.melody  # type: ignore[assignment]
        self.spec = spec
        self.prefix_session = prefix_session
        self.batch = batch
        self.unconditional = texts is None and clips is None
        self.clips = None if clips is None else (clips * batch if len(clips) == 1 else clips)
        hidden = manifest.decoder.hidden_size
        if texts is None:  # transformers: the start id through T5 with a zero mask -> one zero position
            self.states = np.zeros((batch, 1, hidden), np.float32)
            self.text_lengths = np.ones(batch, np.int64)
        else:
            states, mask = encode_text(texts)
            self.states = np.asarray(states, np.float32)
            self.text_lengths = mask.sum(axis=1).astype(np.int64)
        self._filters = chroma_filter_bank(spec.sampling_rate, spec.n_fft, spec.num_chroma)
        null = np.zeros((spec.chroma_length, spec.num_chroma), np.float32)
        null[:, 0] = 1.0
        self._null = null
        self._windows: dict[int, list[np.ndarray]] = {}  # slot prefixes per window start (batching engine)

    def chroma(self, clip: np.ndarray) -> np.ndarray:
        """One-hot chroma of one clip, repeated to chroma_length frames."""
        s = self.spec
        values = chromagram(
            clip,
            sampling_rate=s.sampling_rate,
            n_fft=s.n_fft,
            hop_length=s.hop_length,
            num_chroma=s.num_chroma,
            filters=self._filters,
        )
        return tile_chroma(one_hot_chroma(values), s.chroma_length)

    def prefix(self, start_sample: int, cfg: bool) -> tuple[np.ndarray, np.ndarray]:
        """(prefix [rows, P, H], valid [rows, P] bool) for a window starting at ``start_sample``; rows = 2B with CFG
        (conditional rows first)."""
        s = self.spec
        max_samples = round(s.max_seconds * s.sampling_rate)
        if self.clips is None:
            chroma = np.repeat(self._null[None], self.batch, axis=0)
        else:
            chroma = np.stack([self.chroma(window_melody(c, start_sample, max_samples)) for c in self.clips])
        states, lengths = self.states, self.text_lengths
        if cfg:
            chroma = np.concatenate([chroma, np.repeat(self._null[None], self.batch, axis=0)])
            states = np.concatenate([states, np.zeros_like(states)])
            lengths = np.concatenate([lengths, lengths])
        (prefix,) = self.prefix_session.run(None, {"encoder_hidden_states": states, "chroma": chroma})
        cols = np.arange(prefix.shape[1])
        valid = cols[None, :] < (s.chroma_length + lengths)[:, None]
        return prefix, valid

    def slot_prefixes(self, start_sample: int, cfg: bool) -> list[np.ndarray]:
        """Per prompt, the prefix of its batching slot's two rows (conditional, unconditional; without CFG the
        second row repeats the first), [2, P_b, H], trimmed to the prompt's own length: padding is only ever at
        the end of a row's prefix, so the trimmed rows hold what the prompt holds alone."""
        prefix, valid = self.prefix(start_sample, cfg)
        lengths = valid.sum(axis=1)
        out = []
        for b in range(self.batch):
            p = int(lengths[b])
            second = prefix[self.batch + b, :p] if cfg else prefix[b, :p]
            out.append(np.stack([prefix[b, :p], second]))
        return out

    def prepare_windows(self, start_samples: list[int], cfg: bool) -> None:
        """Compute every window's slot prefixes now (the submitting thread), so the engine thread only feeds them."""
        self._windows = {start: self.slot_prefixes(start, cfg) for start in start_samples}

    def window_prefixes(self, start_sample: int) -> list[np.ndarray]:
        """The slot prefixes ``prepare_windows`` made for the window starting at ``start_sample`` (released)."""
        return self._windows.pop(start_sample)


class MelodyDecoderRunner:
    """The prefix decoder's static cache (bound in place, like ``StaticDecoderRunner``) for one generation.

    ``start(prefix, valid, max_length)`` allocates a cache of P + max_length positions; the first ``run`` feeds the
    prefix with the start columns, later runs one column with an empty prefix. Padded prefix positions
    (``valid`` False) are masked for every query, and each row's sinusoid positions skip them.
    """

    def __init__(self, session: ort.InferenceSession, manifest: Manifest, device: str = "cpu") -> None:
        self.session = session
        self.device = device
        d = manifest.decoder
        spec = manifest.graphs["decoder"]
        self.num_heads, self.head_dim, self.hidden = d.num_heads, d.head_dim, d.hidden_size
        self.num_codebooks, self.vocab = d.num_codebooks, d.vocab_size
        self.position_table = manifest.melody.position_table if manifest.melody else d.max_positions
        n = d.num_layers
        self.past_names = spec.inputs[6 : 6 + 2 * n]
        self.present_names = spec.outputs[1:]
        past_type = next(i.type for i in session.get_inputs() if i.name == self.past_names[0])
        self.dtype = np.float16 if past_type == "tensor(float16)" else np.float32
        self._binding: ort.IOBinding | None = None
        self._past = 0

    @property
    def past_length(self) -> int:
        return self._past

    def start(self, prefix: np.ndarray, valid: np.ndarray, max_length: int) -> None:
        rows, prefix_len = valid.shape
        length = prefix_len + max_length
        if length > self.position_table:
            raise ValueError(
                f"prefix ({prefix_len}) + max_length ({max_length}) exceeds the decoder's "
                f"{self.position_table} positions"
            )
        self._prefix = np.ascontiguousarray(prefix, self.dtype)
        self._valid = valid
        self._shift = (~valid).sum(axis=1).astype(np.int64)  # padded positions before every token of a row
        masked = np.finfo(self.dtype).min  # finite: fp16 exports get fp16's lowest value, not -inf
        self._bias_row = np.where(valid, 0.0, masked).astype(self.dtype)  # [rows, P]
        binding = self.session.io_binding()
        for past, present in zip(self.past_names, self.present_names, strict=True):
            value = ort.OrtValue.ortvalue_from_shape_and_type(
                [rows, self.num_heads, length, self.head_dim], self.dtype, self.device, 0
            )
            binding.bind_ortvalue_input(past, value)
            binding.bind_ortvalue_output(present, value)
        self._logits = ort.OrtValue.ortvalue_from_shape_and_type(
            [rows, self.num_codebooks, self.vocab], self.dtype, self.device, 0
        )
        binding.bind_ortvalue_output("logits", self._logits)
        self._binding, self._past, self._rows, self._length = binding, 0, rows, length

    def release(self) -> None:
        self._binding = None

    def run(self, input_ids: np.ndarray) -> ort.OrtValue:
        binding = self._binding
        if binding is None:
            raise RuntimeError("MelodyDecoderRunner.run called before start()")
        ids = np.ascontiguousarray(input_ids, np.int64)
        rows, seq_len = ids.shape[0], ids.shape[2]
        first = self._past == 0
        prefix = self._prefix if first else np.zeros((rows, 0, self.hidden), self.dtype)
        count = prefix.shape[1] + seq_len
        total = self._past + count
        if total > self._length:
            raise ValueError(f"the cache holds {self._length} positions; {total} requested")
        cache_index = np.arange(self._past, total, dtype=np.int64)
        if first:
            prefix_len = prefix.shape[1]
            positions = np.where(
                cache_index[None, :] < prefix_len, cache_index[None, :], cache_index[None, :] - self._shift[:, None]
            )
            keys = np.concatenate([self._bias_row, np.zeros((rows, seq_len), self.dtype)], axis=1)
            bias = np.ascontiguousarray(np.broadcast_to(keys[:, None, None, :], (rows, 1, count, total)))
        else:
            positions = cache_index[None, :] - self._shift[:, None]
            bias = np.zeros((rows, 1, 1, total), self.dtype)
            bias[:, 0, 0, : self._bias_row.shape[1]] = self._bias_row
        binding.bind_cpu_input("input_ids", ids)
        binding.bind_cpu_input("prefix", prefix)
        binding.bind_cpu_input("position_ids", np.ascontiguousarray(positions, np.int64))
        binding.bind_cpu_input("seqlens_k", np.full(rows, total - 1, np.int32))
        binding.bind_cpu_input("total_sequence_length", np.array(total, np.int32))
        binding.bind_cpu_input("attention_bias", bias)
        self.session.run_with_iobinding(binding)
        self._past = total
        return self._logits

    def step(self, input_ids: np.ndarray) -> np.ndarray:
        return self.run(input_ids).numpy()
