"""A request handed to a model: wait for its result, stream its audio, or cancel it.

``MusicGen.submit`` returns a ``Submission``; ``generate`` and ``stream`` are submit + ``result`` / ``stream``.
With a static-cache export the request runs in the model's continuous-batching engine (``batching``), in
the same decoder batch as every other request in flight (a call with more prompts than the engine has slots as
one-row parts that start as slots free, ``waves``); a concat-cache export runs it alone, in the calling thread,
through ``job.CodeGenerator``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from .engine import Engine
from .job import CodeGenerator, GenerationRequest
from .options import SamplingOptions
from .plan import GenerationPlan, Window
from .requests import RequestHandle, follow
from .streaming import AudioStream, chunk_frames, decode_long, stream_chunks
from .waves import RequestGroup, follow_group

__all__ = ["GenerationResult", "ProgressCallback", "Submission"]

#: progress(frames_done, frames_total); return False to stop early (the audio made so far is returned).
ProgressCallback = Callable[[int, int], "bool | None"]


@dataclass
class GenerationResult:
    """Audio plus what produced it: codes [B, K, frames], the resolved request and per-stage timings (s)."""

    audio: np.ndarray
    codes: np.ndarray
    sampling_rate: int
    timings: dict[str, float] = field(default_factory=dict)
    step_times: list[float] = field(default_factory=list)
    stopped_early: bool = False
    windows: list[Window] = field(default_factory=list)  # the generate calls made (one unless long-form)
    options: SamplingOptions | None = None  # the sampling options as resolved against the checkpoint's defaults
    seed: int | None = None
    plan: GenerationPlan | None = None


class Submission:
    """One request in flight. ``result()`` waits for it; ``stream()`` yields its audio while it is generated;
    ``cancel()`` frees its decoder rows at the next step (``result`` then raises ``RequestCancelledError``).
    ``handle`` is the engine's ``RequestHandle``, a ``RequestGroup`` for a call split into parts, or None
    (concat-cache exports: the request runs in ``result`` / ``stream``)."""

    def __init__(self, engine: Engine, request: GenerationRequest, handle: RequestHandle | RequestGroup | None) -> None:
        self.engine = engine
        self.request = request
        self.handle = handle
        self._job = None if handle is not None else CodeGenerator(engine, request)
        self._submitted = time.perf_counter()

    # ---- inspection (the batched handle or the job, whichever runs the request) ------------------------
    @property
    def source(self) -> RequestHandle | RequestGroup | CodeGenerator:
        return self.handle if self.handle is not None else self._job

    @property
    def plan(self) -> GenerationPlan:
        return self.request.plan

    @property
    def codes(self) -> np.ndarray:
        """Final codes so far, [B, K, frames_ready]."""
        return self.source.codes

    @property
    def window_prompts(self) -> list[np.ndarray | None]:
        """The prompt codes each window was given (long-form: the previous window's tail)."""
        return self.source.window_prompts

    def cancel(self) -> None:
        if self.handle is not None:
            self.handle.cancel()

    # ---- results -----------------------------------------------------------------------------------
    def _steps(self, progress: ProgressCallback | None) -> Iterator[int]:
        if isinstance(self.handle, RequestGroup):
            return follow_group(self.handle, progress)
        if self.handle is not None:
            return follow(self.handle, progress)
        return self._job.run(progress)

    def result(self, progress: ProgressCallback | None = None) -> GenerationResult:
        """Wait for the codes, decode them, and return audio [B, channels, samples] with what produced it.

        ``progress(frames_done, frames_total)`` is called in this thread as frames become final; returning
        False stops generation and the audio made so far is returned (``stopped_early``)."""
        steps = self._steps(progress)
        try:
            for _ in steps:
                pass
        finally:
            steps.close()
        source = self.source
        timings = self._stage_timings()
        t0 = time.perf_counter()
        audio = decode_long(self.engine, source.codes)
        timings["audio_decode"] = time.perf_counter() - t0
        plan = self.request.plan
        if plan.total_samples is not None and not source.stopped:
            audio = audio[..., : plan.total_samples]
        timings["total"] = time.perf_counter() - self._submitted
        return GenerationResult(
            audio,
            source.codes,
            self.engine.manifest.audio.sampling_rate,
            timings,
            list(source.step_times),
            source.stopped,
            list(plan.windows),
            self.request.options,
            self.request.seed,
            plan,
        )

    def stream(self, chunk_seconds: float = 1.0, progress: ProgressCallback | None = None) -> AudioStream:
        """Audio chunks of ``chunk_seconds`` as soon as their frames are final (see ``streaming``);
        closing the stream early cancels the request."""
        frames = chunk_frames(self.engine.manifest.audio.frame_rate, chunk_seconds)
        return stream_chunks(self.engine, self.source, self._steps(progress), frames)

    def _stage_timings(self) -> dict[str, float]:
        if self._job is not None:
            return self._job.stage_timings()
        handle = self.handle
        out = dict(handle.timings)
        out["queue"] = max(0.0, (handle.started or handle.submitted) - handle.submitted)
        out["prefill"] = float(sum(handle.prefill_times))
        out["decode_steps"] = float(sum(handle.step_times))
        return out
