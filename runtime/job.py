"""A generation request, validated once, and the job that runs its plan window by window on an ``Engine``.

The windowing itself (audiocraft's long-form scheme) is planned in ``plan``; here each window is one run of
``Engine.window_steps`` and every final code frame goes into one buffer that streaming decodes as it grows.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from .engine import Engine
from .options import SamplingOptions
from .plan import GenerationPlan
from .rows import RowSlice, row_random

__all__ = ["CodeGenerator", "GenerationRequest"]


@dataclass(frozen=True)
class GenerationRequest:
    """Everything one ``generate`` / ``stream`` call asked for, validated and resolved (None -> the checkpoint's
    default) once, before any heavy work: texts (None: unconditional), prompt audio at the model's rate
    ([B, channels, L] or None), sampling options, seed and the window plan."""

    texts: tuple[str, ...] | None
    batch: int
    options: SamplingOptions
    seed: int | None
    plan: GenerationPlan
    prompt_audio: np.ndarray | None = field(default=None, repr=False, compare=False)
    #: melody checkpoints: one mono clip per row (or one for all) at the model's rate
    melody: list[np.ndarray] | None = field(default=None, repr=False, compare=False)
    #: a part of a larger call (``waves``): the rows it holds, which pick its share of the call's random stream
    rows: RowSlice | None = None


class CodeGenerator:
    """Runs a plan window by window and keeps every final code frame in one buffer.

    Iterating ``run()`` advances generation by one decoder step per item and yields ``frames_ready``; the
    frames [0, frames_ready) of ``buffer`` are final (streaming decodes them while the loop goes on).
    ``progress(frames_done, frames_total)`` is called after every step, counting over all windows; when
    it returns False generation stops and ``stopped`` is set (``codes`` then holds what was made).
    """

    def __init__(self, engine: Engine, request: GenerationRequest) -> None:
        self.engine = engine
        self.request = request
        self.plan = plan = request.plan
        self.rng = row_random(request.seed, request.rows)
        batch = request.batch
        d = engine.manifest.decoder
        self.buffer = np.full((batch, d.num_codebooks, plan.total_frames), d.pad_token_id, dtype=np.int64)
        self.frames_ready = 0
        self.stopped = False
        self.finished = False
        self.timings: dict[str, float] = {}
        self.step_times: list[float] = []
        self.prefill_times: list[float] = []
        self.window_prompts: list[np.ndarray | None] = []  # what each window was given (for tests / inspection)

    @property
    def codes(self) -> np.ndarray:
        """Final codes [B, K, frames_ready] (all frames once finished)."""
        return self.buffer[..., : self.frames_ready]

    def run(self, progress: Callable[[int, int], bool | None] | None = None) -> Iterator[int]:
        engine, request, plan, total = self.engine, self.request, self.plan, self.plan.total_frames
        t0 = time.perf_counter()
        prompt_codes = None if request.prompt_audio is None else engine.encode_audio(request.prompt_audio)
        self.timings["audio_encode"] = time.perf_counter() - t0
        if prompt_codes is not None:
            p = plan.prompt_frames
            if prompt_codes.shape[-1] != p:
                raise RuntimeError(f"the prompt encoded to {prompt_codes.shape[-1]} frames, expected {p}")
            self.buffer[..., :p] = prompt_codes
            self.frames_ready = p
        t0 = time.perf_counter()
        conditioning = engine.condition(request.texts, request.batch, request.melody)
        self.timings["text_encode"] = time.perf_counter() - t0

        for w in plan.windows:
            given = prompt_codes if w.index == 0 else self.buffer[..., w.start : w.start + w.prompt].copy()
            self.window_prompts.append(given)
            done = w.prompt  # frames of this window already in the buffer
            first = True
            steps = engine.window_steps(
                conditioning, given, w.steps, request.options, self.rng, self.step_times, window_start=w.start
            )
            try:
                for state in steps:
                    if first:
                        self.prefill_times.append(self.step_times[-1])
                        first = False
                    ready = min(state.frames_ready, w.length)
                    if ready > done:
                        self.buffer[..., w.start + done : w.start + ready] = state.frames(done, ready)
                        done = ready
                        self.frames_ready = w.start + ready
                    if self.frames_ready >= total:
                        break
                    yield self.frames_ready
                    if progress is not None and progress(self.frames_ready, total) is False:
                        self.stopped = True
                        return
            finally:
                steps.close()  # stopped, closed or failed: the window's decoder buffers are released now
            if done != w.length:  # the loop ended before the window was complete: a bug, not a user error
                raise RuntimeError(f"window {w.index} ended with {done} of {w.length} frames")
        self.finished = True
        if progress is not None:
            progress(total, total)
        yield self.frames_ready

    def run_to_end(self, progress: Callable[[int, int], bool | None] | None = None) -> np.ndarray:
        for _ in self.run(progress):
            pass
        return self.codes

    def stage_timings(self) -> dict[str, float]:
        out = dict(self.timings)
        out["prefill"] = float(sum(self.prefill_times))
        out["decode_steps"] = float(sum(self.step_times) - out["prefill"])
        return out
