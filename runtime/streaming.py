"""Streaming: EnCodec decodes the final code frames incrementally.

Exports with the stateful EnCodec graph decode every frame once, carrying the LSTM state between chunks
(``codec_stream.StatefulStreamDecoder``); older exports use the overlap path below (``StreamDecoder``).
``stream_decoder`` picks one. Both emit the same chunk boundaries for the same codes, whatever the timing.

The overlap path: EnCodec's decoder is not frame-local: later codes reach a few frames back through the
convolutions (finite right context), and earlier codes reach forward through the LSTM (left context, decaying).
So a chunk holds back ``RIGHT_CONTEXT_FRAMES`` frames until their right context exists, every decode starts
``LEFT_CONTEXT_FRAMES`` frames before the first frame it emits, and the first ``CROSSFADE_FRAMES`` frames it
emits are cross-faded (linear) with the previous decode's tail, which had full context. The sizes come from
``measure_receptive_field`` with a margin; the measurements, the tested bounds and the cost of both paths are
in docs/design.md §10.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .codec_stream import StatefulStreamDecoder
from .engine import CODEC_CALL_FRAMES, Engine
from .plan import GenerationPlan

__all__ = [
    "CROSSFADE_FRAMES",
    "LEFT_CONTEXT_FRAMES",
    "ONE_SHOT_DECODE_FRAMES",
    "RIGHT_CONTEXT_FRAMES",
    "AudioChunk",
    "AudioStream",
    "ReceptiveField",
    "StreamDecoder",
    "chunk_frames",
    "decode_long",
    "measure_receptive_field",
    "snr_db",
    "stream_chunks",
    "stream_decoder",
]

RIGHT_CONTEXT_FRAMES = 5
LEFT_CONTEXT_FRAMES = 32
CROSSFADE_FRAMES = 8
#: Longer code sequences are decoded in overlapping pieces of this many frames (30 s, the frames one EnCodec call
#: may hold), the same way streaming does, so a 10-minute clip does not need tens of GB of activations at once.
ONE_SHOT_DECODE_FRAMES = CODEC_CALL_FRAMES


@dataclass
class AudioChunk:
    """A piece of the generated audio: ``audio`` [batch, channels, n] float32 starting at ``start`` seconds."""

    audio: np.ndarray
    start: float
    start_sample: int
    final: bool
    sampling_rate: int

    @property
    def duration(self) -> float:
        return self.audio.shape[-1] / self.sampling_rate


class StreamDecoder:
    """Decodes a growing code sequence into consecutive audio pieces (see the module docstring).

    ``decode`` maps codes [B, K, F] to audio [B, channels, hop * F] (``MusicGen.decode_codes``).
    Call ``step(codes, ready)`` whenever more frames are final; ``step(codes, total, final=True)`` at the end.
    """

    def __init__(
        self,
        decode: Callable[[np.ndarray], np.ndarray],
        hop: int,
        channels: int,
        *,
        left_context: int = LEFT_CONTEXT_FRAMES,
        right_context: int = RIGHT_CONTEXT_FRAMES,
        crossfade: int = CROSSFADE_FRAMES,
    ) -> None:
        for name, value in (("left_context", left_context), ("right_context", right_context)):
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0 frames, got {value!r}")
        if not isinstance(crossfade, int) or crossfade < 0:
            raise ValueError(f"crossfade must be an integer >= 0 frames, got {crossfade!r}")
        self.decode = decode
        self.hop = int(hop)
        self.channels = int(channels)
        self.left_context = left_context
        self.right_context = right_context
        self.crossfade = crossfade
        self.emitted = 0  # frames whose audio has been returned
        self._tail: np.ndarray | None = None  # previous decode's audio of frames [emitted, emitted + crossfade)

    @property
    def held_back(self) -> int:
        """Frames after the last emitted one that must be final before a non-final step emits it."""
        return self.right_context + self.crossfade

    def available(self, ready: int) -> int:
        """Frames a non-final ``step`` could return now, with ``ready`` frames final."""
        return max(0, ready - self.held_back - self.emitted)

    def step(self, codes: np.ndarray, ready: int, *, final: bool = False) -> np.ndarray:
        """Audio of frames [emitted, end): end = ready at the end, else ready - right context - cross-fade."""
        hop = self.hop
        end = ready if final else ready - self.right_context - self.crossfade
        if end <= self.emitted:  # nothing new (e.g. stopped before the first frame)
            return np.zeros((codes.shape[0], self.channels, 0), np.float32)
        start = max(0, self.emitted - self.left_context)
        audio = self.decode(codes[..., start:ready])
        lo = (self.emitted - start) * hop
        piece = np.array(audio[..., lo : (end - start) * hop], dtype=np.float32)
        if self._tail is not None:
            n = min(self._tail.shape[-1], piece.shape[-1])
            w = ((np.arange(n, dtype=np.float32) + 0.5) / n).astype(np.float32)
            piece[..., :n] = self._tail[..., :n] * (1 - w) + piece[..., :n] * w
        if final:
            self._tail = None
        else:
            self._tail = np.array(audio[..., (end - start) * hop : (end + self.crossfade - start) * hop])
            if self.crossfade == 0:
                self._tail = None
        self.emitted = end
        return piece


def stream_decoder(engine: Engine, *, stateful: bool | None = None) -> StreamDecoder | StatefulStreamDecoder:
    """The decoder of one stream: the stateful graph when the export has it (``stateful=None``), else the
    overlap path. ``stateful=False`` forces the overlap path (benchmarks compare the two)."""
    if stateful is None:
        stateful = engine.has_stateful_codec
    if stateful:
        return engine.stateful_decoder()
    return StreamDecoder(engine.decode_codes, engine.manifest.audio.hop_length, engine.channels)


def decode_long(engine: Engine, codes: np.ndarray, max_frames: int = ONE_SHOT_DECODE_FRAMES) -> np.ndarray:
    """``engine.decode_codes`` for any length: one call up to ``max_frames`` (exactly what transformers does),
    pieces of ``max_frames`` through the streaming decoder (same bound) beyond, to keep memory flat for
    long-form clips."""
    frames = codes.shape[-1]
    if frames == 0:  # stopped before the first frame
        return np.zeros((codes.shape[0], engine.channels, 0), np.float32)
    if frames <= max_frames:
        return engine.decode_codes(codes)
    dec = stream_decoder(engine)
    parts = [dec.step(codes, ready) for ready in range(max_frames, frames, max_frames)]
    parts.append(dec.step(codes, frames, final=True))
    return np.concatenate(parts, axis=-1)


class AudioStream:
    """The chunk iterator ``MusicGen.stream`` returns; holds decoder buffers until it ends or is closed.

    A stream that is not iterated to the end keeps its decoder state (and, on CUDA, the pooled buffers
    its captured graph replays into) until it is closed. Close it explicitly, or use it as a context
    manager, when stopping early::

        with model.stream("ambient", duration=20) as chunks:
            for chunk in chunks:
                if enough(chunk):
                    break          # leaving the block releases the buffers at once
    """

    def __init__(self, chunks: Iterator[AudioChunk]) -> None:
        self._chunks = chunks
        self.closed = False

    def __iter__(self) -> AudioStream:
        return self

    def __next__(self) -> AudioChunk:
        if self.closed:
            raise StopIteration
        try:
            return next(self._chunks)
        except StopIteration:
            self.closed = True
            raise

    def close(self) -> None:
        """Stop generating and release the decoder buffers now; later iteration yields nothing."""
        if not self.closed:
            self.closed = True
            self._chunks.close()

    cancel = close

    def __enter__(self) -> AudioStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def chunk_frames(frame_rate: int, chunk_seconds: float) -> int:
    """``chunk_seconds`` validated and in frames (at least one)."""
    if (
        isinstance(chunk_seconds, bool)
        or not isinstance(chunk_seconds, (int, float))
        or not math.isfinite(chunk_seconds)
    ):
        raise ValueError(f"chunk_seconds must be a number of seconds, got {chunk_seconds!r}")
    frames = math.floor(chunk_seconds * frame_rate + 1e-6)
    if frames < 1:
        raise ValueError(
            f"chunk_seconds must be at least one frame ({1 / frame_rate:g} s at {frame_rate} frames/s), "
            f"got {chunk_seconds!r}"
        )
    return frames


class CodeSource(Protocol):
    """What streaming reads while codes are generated: a ``job.CodeGenerator`` or a ``requests.RequestHandle``."""

    buffer: np.ndarray  # [B, K, total frames]; frames [0, frames_ready) are final
    frames_ready: int
    finished: bool
    stopped: bool

    @property
    def plan(self) -> GenerationPlan: ...


def stream_chunks(engine: Engine, source: CodeSource, steps: Iterator[int], frames_per_chunk: int) -> AudioStream:
    """Drive ``steps`` (an iterator that advances ``source``) and yield audio chunks of ``frames_per_chunk``
    frames as soon as they are final, then a final chunk with the rest. With a duration the chunks add up to
    exactly that many samples; when generation is stopped early the final chunk ends the audio made.

    Chunk boundaries depend only on the codes, never on timing: a reader that falls behind the generator gets
    the same chunks (several at once), so the same seed gives the same audio bytes however fast it is read."""
    return AudioStream(_stream(engine, source, steps, frames_per_chunk))


def _stream(engine: Engine, job: CodeSource, steps: Iterator[int], chunk_frames: int) -> Iterator[AudioChunk]:
    sr = engine.manifest.audio.sampling_rate
    dec = stream_decoder(engine)
    total_samples = job.plan.total_samples
    total_frames = job.buffer.shape[-1]
    held_back = dec.held_back  # frames after a chunk that must be final before it is sent
    sent = 0

    def chunk(audio: np.ndarray, final: bool) -> AudioChunk:
        nonlocal sent
        if total_samples is not None and not job.stopped:
            audio = audio[..., : max(0, total_samples - sent)]
        out = AudioChunk(np.ascontiguousarray(audio), sent / sr, sent, final, sr)
        sent += audio.shape[-1]
        return out

    def complete_chunks(limit: int) -> Iterator[AudioChunk]:
        """Every non-final chunk whose frames and held-back context are within the first ``limit`` frames.
        ``limit`` stays below the last frame: the chunk that reaches the end is the final one."""
        while dec.emitted + chunk_frames + held_back <= limit:
            yield chunk(dec.step(job.buffer, dec.emitted + chunk_frames + held_back), final=False)

    try:
        for ready in steps:
            yield from complete_chunks(min(ready, total_frames - 1))
    finally:
        steps.close()  # closed early: the generation stops and its decoder rows are released now
    yield from complete_chunks(job.frames_ready - 1)  # a reader that fell behind catches up on the same chunks
    yield chunk(dec.step(job.buffer, job.frames_ready, final=True), final=True)


@dataclass(frozen=True)
class ReceptiveField:
    """How far a change in one code frame reaches in the decoded audio (frames, at a relative threshold)."""

    before: int  # earlier output frames affected: the right context a frame needs
    after: int  # later output frames affected: the left context (LSTM memory)
    eps: float


def measure_receptive_field(engine: Engine, *, frames: int = 160, eps: float = 1e-4, seed: int = 0) -> ReceptiveField:
    """Perturb one code frame of random codes and see how far the decoded audio changes by more than
    ``eps`` x the clip's RMS (per output frame, max over samples and channels)."""
    rng = np.random.default_rng(seed)
    d = engine.manifest
    codes = rng.integers(0, d.audio.codec_vocab_size, (1, d.decoder.num_codebooks, frames))
    base = engine.decode_codes(codes)
    j = frames // 2
    changed = codes.copy()
    changed[..., j] = (changed[..., j] + d.audio.codec_vocab_size // 2) % d.audio.codec_vocab_size
    hop = d.audio.hop_length
    diff = np.abs(engine.decode_codes(changed) - base).max(axis=(0, 1)).reshape(-1, hop).max(axis=1)
    hit = np.nonzero(diff > eps * np.sqrt(np.mean(base.astype(np.float64) ** 2)))[0]
    if hit.size == 0:
        return ReceptiveField(0, 0, eps)
    return ReceptiveField(int(j - hit.min()), int(hit.max() - j), eps)


def snr_db(reference: np.ndarray, test: np.ndarray) -> float:
    """10 log10(sum ref^2 / sum (ref - test)^2); inf when equal."""
    ref = np.asarray(reference, np.float64)
    err = float(np.sum((ref - np.asarray(test, np.float64)) ** 2))
    return math.inf if err == 0 else 10 * math.log10(float(np.sum(ref**2)) / err)
