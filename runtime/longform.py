"""Long-form generation by overlapping windows, as audiocraft extends MusicGen beyond its 30 s training clips.

audiocraft (``audiocraft/models/genmodel.py``, ``generate_tokens``): each window is at most ``max_duration``
(30 s) long; the window advances by ``extend_stride`` (18 s); the last ``window - stride`` seconds (12 s) of the
codes generated so far are the prompt of the next window (codes, not re-encoded audio); the text conditioning
is the same for every window; an audio prompt is the start of the first window. In frames::

    offset, prompt = 0, P
    while offset + prompt < total:
        length = min(total - offset, window)        # frames the window ends with, its prompt included
        generate frames [offset + prompt, offset + length) from the prompt codes [offset, offset + prompt)
        prompt, offset = length - stride, offset + stride

One window is one ordinary MusicGen generate call with the prompt codes as decoder prompt (what transformers
does with ``decoder_input_ids``). The codes of all windows are concatenated and decoded once at the end (or
incrementally while streaming), so there are no seams beyond the model's own.

numpy only; the ``MusicGen`` facade owns the sessions and calls in here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .options import is_real

if TYPE_CHECKING:
    from .manifest import Manifest
    from .model import MusicGen
    from .options import SamplingOptions

__all__ = [
    "DEFAULT_DURATION_CAP",
    "DEFAULT_STRIDE_RATIO",
    "CodeGenerator",
    "GenerationPlan",
    "Window",
    "plan_generation",
    "plan_windows",
    "resolve_window",
]

#: audiocraft's extend_stride (18 s) over its max_duration (30 s): the default stride for any window length.
DEFAULT_STRIDE_RATIO = 18.0 / 30.0
#: Longest duration ``generate`` accepts unless ``MusicGen.duration_cap`` says otherwise (seconds).
DEFAULT_DURATION_CAP = 600.0
_EPS = 1e-6  # seconds * frame_rate is rounded down, but 2.4 * 50 = 119.99999999999999 must give 120


def _to_frames(seconds: float, frame_rate: int) -> int:
    return math.floor(seconds * frame_rate + _EPS)


@dataclass(frozen=True)
class Window:
    """One generate call: output frames [start, start + length), of which the first ``prompt`` are given."""

    index: int
    start: int
    prompt: int
    length: int
    steps: int  # decoder steps (transformers' max_new_tokens) of this call

    @property
    def stop(self) -> int:
        return self.start + self.length


@dataclass(frozen=True)
class GenerationPlan:
    """What one ``generate`` call will do: its windows, the frames it ends with, the samples it returns."""

    windows: tuple[Window, ...]
    total_frames: int  # frames in the final codes, prompt included
    total_samples: int | None  # exact output length when a duration was asked for (None: frames * hop)
    window_frames: int
    stride_frames: int

    @property
    def prompt_frames(self) -> int:
        return self.windows[0].prompt


def resolve_window(manifest: Manifest, window: float | None, extend_stride: float | None) -> tuple[int, int]:
    """Validate ``window`` / ``extend_stride`` (seconds) and return them in frames.

    Default window: the checkpoint's ``max_length`` (1500 frames = 30 s for the hub's, audiocraft's
    ``max_duration``), capped by what the decoder's position table allows. Default stride: 0.6 window (18 s of 30).
    """
    fr = manifest.audio.frame_rate
    c = manifest.codebooks_per_channel
    max_frames = manifest.decoder.max_positions - c  # 1 start column + frames + (C - 1) delay columns
    max_seconds = max_frames / fr
    if window is None:
        window_frames = min(manifest.generation.max_length, max_frames)
    else:
        if not is_real(window) or not 0 < window <= max_seconds + 1e-9:
            raise ValueError(
                f"window must be a number of seconds in (0, {max_seconds:g}] (the model's "
                f"{manifest.decoder.max_positions} positions), got {window!r}"
            )
        window_frames = min(_to_frames(window, fr), max_frames)
        if window_frames < 2:
            raise ValueError(f"window must be at least 2 frames ({2 / fr:g} s), got {window!r} s")
    window_seconds = window_frames / fr
    if extend_stride is None:
        stride_frames = max(1, _to_frames(window_seconds * DEFAULT_STRIDE_RATIO, fr))
    else:
        if not is_real(extend_stride) or not 0 < extend_stride < window_seconds:
            raise ValueError(
                f"extend_stride must be in (0, {window_seconds:g}) seconds (0 < stride < window), got {extend_stride!r}"
            )
        stride_frames = _to_frames(extend_stride, fr)
        if not 1 <= stride_frames < window_frames:
            raise ValueError(
                f"extend_stride {extend_stride} s is {stride_frames} frames: it must be at least one frame "
                f"({1 / fr:g} s) and less than the window ({window_frames} frames)"
            )
    return window_frames, stride_frames


def plan_windows(total_frames: int, window_frames: int, stride_frames: int, prompt_frames: int = 0) -> list[tuple]:
    """audiocraft's window loop in frames: [(start, prompt, length), ...] (see the module docstring)."""
    if not 0 < stride_frames < window_frames:
        raise ValueError(f"need 0 < stride ({stride_frames}) < window ({window_frames}) frames")
    out = []
    offset, prompt = 0, prompt_frames
    while offset + prompt < total_frames:
        length = min(total_frames - offset, window_frames)
        out.append((offset, prompt, length))
        prompt, offset = length - stride_frames, offset + stride_frames
    return out


def _window_steps(new_frames: int, prompt: int, c: int) -> int:
    # frames = prompt + steps + 1 - C; below 2C - 1 columns transformers applies no delay pattern: generate more
    return max(new_frames + c - 1, 2 * c - 2 - prompt)


def plan_generation(
    manifest: Manifest,
    *,
    duration: float | None,
    max_new_tokens: int | None,
    prompt_frames: int,
    window: float | None = None,
    extend_stride: float | None = None,
    duration_cap: float = DEFAULT_DURATION_CAP,
) -> GenerationPlan:
    """Turn the user's length arguments into windows, validating each against its valid range.

    ``max_new_tokens`` means what it means in transformers (one pass; frames = P + steps + 1 - C);
    ``duration`` (seconds, prompt included) is exact: above the window it generates by windows;
    with neither, the checkpoint's ``max_length`` applies (one pass).
    """
    c = manifest.codebooks_per_channel
    fr = manifest.audio.frame_rate
    max_positions = manifest.decoder.max_positions
    limit = max_positions - 1 - prompt_frames  # decoder positions left after start token and prompt
    window_frames, stride_frames = resolve_window(manifest, window, extend_stride)
    if duration is not None and max_new_tokens is not None:
        raise ValueError("give duration or max_new_tokens, not both")
    if duration is None:
        if max_new_tokens is not None:
            if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)):
                raise ValueError(f"max_new_tokens must be an integer, got {max_new_tokens!r}")
            steps = int(max_new_tokens)
            lowest = max(c, 2 * c - 2 - prompt_frames)
            if not lowest <= steps <= limit:
                raise ValueError(f"max_new_tokens must be in {lowest}..{limit} for this model and prompt, got {steps}")
        else:
            steps = manifest.generation.max_length - 1 - prompt_frames
            if steps > limit or steps < c:
                raise ValueError(
                    f"the checkpoint's max_length ({manifest.generation.max_length}) does not fit this prompt "
                    f"and the model's {max_positions} positions; give a duration"
                )
        total = prompt_frames + steps + 1 - c
        windows = (Window(0, 0, prompt_frames, total, steps),)
        return GenerationPlan(windows, total, None, window_frames, stride_frames)

    if not is_real(duration) or duration <= 0:
        raise ValueError(f"duration must be a positive number of seconds, got {duration!r}")
    if duration > duration_cap + 1e-9:
        raise ValueError(
            f"duration {duration} s is beyond the configured cap: 0 < duration <= {duration_cap:g} s "
            "(raise MusicGen.duration_cap to allow longer clips)"
        )
    total = math.ceil(duration * fr - 1e-9)
    if total <= prompt_frames:
        raise ValueError(
            f"prompt audio ({prompt_frames / fr:g} s) is not shorter than the requested "
            f"duration ({duration} s): ask for more than the prompt's length"
        )
    if total > window_frames and prompt_frames >= window_frames:
        raise ValueError(
            f"prompt audio ({prompt_frames / fr:g} s) must be shorter than the generation window "
            f"({window_frames / fr:g} s)"
        )
    windows = []
    for i, (start, prompt, length) in enumerate(plan_windows(total, window_frames, stride_frames, prompt_frames)):
        steps = _window_steps(length - prompt, prompt, c)
        if steps > max_positions - 1 - prompt:  # cannot happen with a valid window; a guard for odd manifests
            raise ValueError(f"window {i} needs {steps} steps, more than the model's {max_positions} positions")
        windows.append(Window(i, start, prompt, length, steps))
    return GenerationPlan(
        tuple(windows), total, round(duration * manifest.audio.sampling_rate), window_frames, stride_frames
    )


class CodeGenerator:
    """Runs a plan window by window and keeps every final code frame in one buffer.

    Iterating ``run()`` advances generation by one decoder step per item and yields ``frames_ready``; the
    frames [0, frames_ready) of ``buffer`` are final (streaming decodes them while the loop goes on).
    ``progress(frames_done, frames_total)`` is called after every step, counting over all windows; when
    it returns False generation stops and ``stopped`` is set (``codes`` then holds what was made).
    """

    def __init__(
        self,
        model: MusicGen,
        texts: list[str] | None,
        prompt_audio: np.ndarray | None,
        batch: int,
        plan: GenerationPlan,
        options: SamplingOptions,
        rng: np.random.Generator,
        melody: list[np.ndarray] | None = None,
    ) -> None:
        self.model = model
        self.melody = melody  # melody checkpoints: one mono clip per row (or one for all) at the model's rate
        self.texts = texts
        self.prompt_audio = prompt_audio
        self.batch = batch
        self.plan = plan
        self.options = options
        self.rng = rng
        d = model.manifest.decoder
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
        model, plan, total = self.model, self.plan, self.plan.total_frames
        t0 = time.perf_counter()
        prompt_codes = None if self.prompt_audio is None else model.encode_audio(self.prompt_audio)
        self.timings["audio_encode"] = time.perf_counter() - t0
        if prompt_codes is not None:
            p = plan.prompt_frames
            if prompt_codes.shape[-1] != p:
                raise RuntimeError(f"the prompt encoded to {prompt_codes.shape[-1]} frames, expected {p}")
            self.buffer[..., :p] = prompt_codes
            self.frames_ready = p
        t0 = time.perf_counter()
        cross_kv, text_mask = model._condition(self.texts, self.batch, self.melody)
        self.timings["text_encode"] = time.perf_counter() - t0
        cfg = (self.texts is not None or self.melody is not None) and self.options.guidance_scale > 1

        for w in plan.windows:
            given = prompt_codes if w.index == 0 else self.buffer[..., w.start : w.start + w.prompt].copy()
            self.window_prompts.append(given)
            done = w.prompt  # frames of this window already in the buffer
            first = True
            steps = model._window_steps(
                cross_kv, text_mask, given, self.batch, w.steps, self.options, cfg, self.rng, self.step_times, w.start
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
