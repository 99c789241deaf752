"""A call with more prompts than the engine has slots: its rows run as parts that start as slots free.

``MusicGen.submit`` (and so ``generate``, ``stream``, ``pipeline``) splits such a request into one-row parts
(``split_request``) and queues them together (``BatchEngine.submit_all``); a part starts as soon as one slot is
free, so a 16-prompt call on 4 slots runs in waves of 4 without any row waiting for a whole wave to end, and
other callers' requests keep their place in the same FIFO queue. ``RequestGroup`` is what the caller holds: the
rows in input order, as one request. What it guarantees and what it cannot (docs/design.md §17):

- Codes: every row is generated as the call would generate it in one piece. Each part is conditioned on its own
  prompt (as it would be alone) and draws its rows' share of the call's one random stream (``rows``), so greedy
  rows equal their prompts run alone, and seeded sampled rows equal the same call on a model with enough slots.
- Progress counts every row: ``progress(frames_done, frames_total)`` gets the mean over rows of each row's final
  frames (floored) and the clip's frames, so it is the same as for a call that fits the slots, and reaches
  ``frames_total`` only when the last row is done.
- Stopping or cancelling stops the running rows and the rows still waiting. A stopped call returns the frames
  every row has reached (a batch is one array), which is none when a row had not started yet.
- Streaming yields chunks of every row at once, so its chunks come at the pace of the last rows to start:
  the first chunk once the last wave has made ``chunk_seconds``.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace

import numpy as np

from .job import GenerationRequest
from .plan import GenerationPlan
from .requests import RequestCancelledError, RequestHandle
from .rows import RowSlice

__all__ = ["RequestGroup", "follow_group", "split_request", "with_seed"]


def with_seed(request: GenerationRequest) -> GenerationRequest:
    """``request`` with a concrete seed: the parts of a split call must share one random stream, and the result
    then reports the seed that reproduces it (a call that fits the slots keeps None: fresh entropy)."""
    if request.seed is not None:
        return request
    return replace(request, seed=secrets.randbits(63))


def split_request(request: GenerationRequest, rows_per_part: int = 1) -> list[GenerationRequest]:
    """One request per ``rows_per_part`` rows of ``request`` (texts, audio prompts and melodies sliced with
    them; one melody for all rows stays with every part), each holding its rows' share of the seed."""
    if request.seed is None:
        raise ValueError("split_request needs a seeded request (with_seed): the parts share its random stream")
    batch = request.batch
    parts = []
    for lo in range(0, batch, rows_per_part):
        hi = min(lo + rows_per_part, batch)
        melody = request.melody
        if melody is not None and len(melody) == batch:
            melody = melody[lo:hi]
        parts.append(
            replace(
                request,
                texts=None if request.texts is None else request.texts[lo:hi],
                batch=hi - lo,
                prompt_audio=None if request.prompt_audio is None else request.prompt_audio[lo:hi],
                melody=melody,
                rows=RowSlice(lo, hi, batch),
            )
        )
    return parts


class RequestGroup:
    """The parts of one split call (``RequestHandle``s sharing one condition variable), seen as one request.

    Offers what ``Submission`` and streaming read from a ``RequestHandle``: ``buffer`` / ``codes`` hold the rows
    in input order; ``frames_ready`` is the frames every row has (what a result or a stream can hold);
    ``progress_frames`` the mean over rows (what progress reports)."""

    def __init__(self, request: GenerationRequest, parts: list[RequestHandle]) -> None:
        self.request = request
        self.parts = parts
        self._changed: threading.Condition = parts[0]._changed  # shared by the parts (``submit_all``)
        self.step_times = parts[0].step_times  # shared too: one entry per engine step any row was in
        self.prefill_times = parts[0].prefill_times
        self.submitted = min(p.submitted for p in parts)
        self._stopped = False
        self._cancelled = False

    # ---- what a RequestHandle offers -------------------------------------------------------------------
    @property
    def plan(self) -> GenerationPlan:
        return self.request.plan

    @property
    def buffer(self) -> np.ndarray:
        """[B, K, total frames] in input order; frames [0, frames_ready) are final for every row."""
        return np.concatenate([p.buffer for p in self.parts])

    @property
    def codes(self) -> np.ndarray:
        return self.buffer[..., : self.frames_ready]

    @property
    def frames_ready(self) -> int:
        return min(p.frames_ready for p in self.parts)

    @property
    def progress_frames(self) -> int:
        """Each row's final frames, averaged over the rows (floored): progress over the whole call."""
        return sum(p.frames_ready * p.request.batch for p in self.parts) // self.request.batch

    @property
    def finished(self) -> bool:
        return all(p.finished for p in self.parts)

    @property
    def stopped(self) -> bool:
        return self._stopped

    @property
    def cancelled(self) -> bool:
        return self._cancelled or any(p.cancelled for p in self.parts)

    @property
    def error(self) -> BaseException | None:
        return next((p.error for p in self.parts if p.error is not None), None)

    @property
    def done(self) -> bool:
        return self.finished or self._stopped or self.cancelled or self.error is not None

    @property
    def started(self) -> float | None:
        times = [p.started for p in self.parts if p.started is not None]
        return min(times) if times else None

    @property
    def timings(self) -> dict[str, float]:
        """Audio-prompt and text encoding, summed over the parts (each is conditioned on its own rows)."""
        out: dict[str, float] = {}
        for part in self.parts:
            for name, value in part.timings.items():
                out[name] = out.get(name, 0.0) + value
        return out

    @property
    def window_prompts(self) -> list[np.ndarray | None]:
        """Per window that every row began, the prompt codes of all rows (None: the first window had none)."""
        count = min(len(p.window_prompts) for p in self.parts)
        out: list[np.ndarray | None] = []
        for i in range(count):
            given = [p.window_prompts[i] for p in self.parts]
            out.append(None if given[0] is None else np.concatenate(given))
        return out

    def stop(self, frames: int | None = None) -> None:
        """Stop every row at the next step, the waiting ones before they start; the result holds the frames
        every row reached (``frames`` is accepted for ``RequestHandle``'s signature; rows differ here)."""
        with self._changed:
            if not self.done:
                self._stopped = True
                for part in self.parts:
                    part.stop()
                self._changed.notify_all()

    def cancel(self) -> None:
        """Abandon every row: running ones free their slots at the next step, waiting ones never start."""
        with self._changed:
            if not self.done:
                self._cancelled = True
            for part in self.parts:
                part.cancel()
            self._changed.notify_all()

    def wait(self, frames: int, timeout: float | None = None) -> int:
        """Block until ``progress_frames`` exceeds ``frames`` or the call is done; returns ``progress_frames``."""
        with self._changed:
            self._changed.wait_for(lambda: self.progress_frames > frames or self.done, timeout)
            self._raise_if_failed()
            return self.progress_frames

    def result(self, timeout: float | None = None) -> np.ndarray:
        """The codes [B, K, frames] of every row once done."""
        with self._changed:
            if not self._changed.wait_for(lambda: self.done, timeout):
                raise TimeoutError(f"the request is not done after {timeout} s")
            self._raise_if_failed()
            return self.codes

    def _raise_if_failed(self) -> None:
        error, cancelled = self.error, self.cancelled
        if error is None and not cancelled:
            return
        for part in self.parts:  # one row failed or was cancelled: the others stop holding slots
            part.cancel()
        if error is not None:
            raise error
        raise RequestCancelledError("the request was cancelled")


def follow_group(group: RequestGroup, progress: Callable[[int, int], bool | None] | None = None) -> Iterator[int]:
    """``requests.follow`` for a split call: progress counts every row (``progress_frames``), the values yielded
    are the frames every row has (``frames_ready``), which streaming decodes. Closing early cancels every row."""
    total = group.plan.total_frames
    counted = -1
    try:
        while True:
            ready = group.wait(counted)
            if group.done:
                break
            if progress is not None:
                for f in range(ready if counted < 0 else counted + 1, ready + 1):
                    if progress(f, total) is False:
                        group.stop()
                        break
                if group.stopped:
                    break
            counted = ready
            yield group.frames_ready
        group.result()  # raises if a row failed or the call was cancelled
        if group.finished and progress is not None:
            progress(total, total)
        yield group.frames_ready
    finally:
        if not group.done:
            group.cancel()
