"""One submitted request as the continuous-batching engine and its callers share it: the handle a caller waits
on, stops or cancels, the errors a submission can end with, and ``follow``, which turns a handle into the frame
counts streaming and ``result`` consume. Kept apart from the engine loop (``batching``), which only updates it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import numpy as np

from .engine import Conditioning
from .job import GenerationRequest
from .plan import GenerationPlan

__all__ = ["QueueFullError", "RequestCancelledError", "RequestHandle", "follow"]


class QueueFullError(RuntimeError):
    """The engine's wait queue is full: the request was not accepted (a server answers 429 and retries later)."""


class RequestCancelledError(RuntimeError):
    """The request was cancelled before it finished."""


class RequestHandle:
    """One submitted request: wait for its frames, take its codes, stop or cancel it. Thread-safe."""

    def __init__(
        self,
        request: GenerationRequest,
        conditioning: Conditioning,
        prompt_codes,
        num_codebooks,
        pad,
        changed: threading.Condition | None = None,
    ) -> None:
        """``changed``: the condition variable to notify on every change (the parts of a split call share one)."""
        self.request = request
        self.conditioning = conditioning
        self.prompt_codes = prompt_codes
        plan = request.plan
        self.buffer = np.full((request.batch, num_codebooks, plan.total_frames), pad, dtype=np.int64)
        self.frames_ready = 0
        if prompt_codes is not None:
            self.buffer[..., : plan.prompt_frames] = prompt_codes
            self.frames_ready = plan.prompt_frames
        self.timings: dict[str, float] = {}
        self.step_times: list[float] = []
        self.prefill_times: list[float] = []
        self.window_prompts: list[np.ndarray | None] = []
        self.submitted = time.perf_counter()
        self.started: float | None = None
        self.finished = False  # every frame generated
        self.stopped = False  # stopped early on request: the codes made so far are the result
        self.cancelled = False
        self.error: BaseException | None = None
        self.caller = 0  # the submit_all call that queued it (the engine counts waiting requests by caller)
        self._changed = threading.Condition() if changed is None else changed

    @property
    def plan(self) -> GenerationPlan:
        return self.request.plan

    @property
    def done(self) -> bool:
        return self.finished or self.stopped or self.cancelled or self.error is not None

    @property
    def codes(self) -> np.ndarray:
        """Final codes [B, K, frames_ready]."""
        return self.buffer[..., : self.frames_ready]

    def stop(self, frames: int | None = None) -> None:
        """End generation at the next step; ``result`` returns the frames made so far, or the first ``frames`` of
        them (the count the caller saw when it decided, so the result does not depend on the engine's timing)."""
        with self._changed:
            if not self.done:
                self.stopped = True
                if frames is not None:
                    self.frames_ready = min(self.frames_ready, frames)
                self._changed.notify_all()

    def cancel(self) -> None:
        """Abandon the request at the next step; its slots go to others and ``result`` raises RequestCancelledError."""
        with self._changed:
            if not self.done:
                self.cancelled = True
                self._changed.notify_all()

    def wait(self, frames: int, timeout: float | None = None) -> int:
        """Block until more than ``frames`` frames are ready or the request is done; returns frames_ready."""
        with self._changed:
            self._changed.wait_for(lambda: self.frames_ready > frames or self.done, timeout)
            self._raise_if_failed()
            return self.frames_ready

    def result(self, timeout: float | None = None) -> np.ndarray:
        """The codes [B, K, frames] once done (all frames, or those made before ``stop``)."""
        with self._changed:
            if not self._changed.wait_for(lambda: self.done, timeout):
                raise TimeoutError(f"the request is not done after {timeout} s")
            self._raise_if_failed()
            return self.codes

    def _raise_if_failed(self) -> None:
        if self.error is not None:
            raise self.error
        if self.cancelled:
            raise RequestCancelledError("the request was cancelled")

    def _update(self, **changes) -> None:
        with self._changed:
            if self.stopped:  # frames made after a stop are not part of the result
                changes.pop("frames_ready", None)
                changes.pop("finished", None)
            for name, value in changes.items():
                setattr(self, name, value)
            self._changed.notify_all()


def follow(handle: RequestHandle, progress: Callable[[int, int], bool | None] | None = None) -> Iterator[int]:
    """Yield the request's ``frames_ready`` as the engine advances it (and once more at the end).

    ``progress(frames_done, frames_total)`` is called in the consuming thread; returning False stops the
    request at the engine's next step. Closing the iterator before the end cancels the request.
    """
    total = handle.plan.total_frames
    frames = -1
    try:
        while True:
            ready = handle.wait(frames)
            if handle.done:
                break
            if progress is not None:  # every frame in order, as if the caller were the only one
                for f in range(ready if frames < 0 else frames + 1, ready + 1):
                    if progress(f, total) is False:
                        handle.stop(f)  # the result ends exactly where the caller said stop
                        break
                if handle.stopped:
                    break
            frames = ready
            yield frames
        handle.result()  # raises if the request failed or was cancelled
        if handle.finished and progress is not None:
            progress(total, total)
        yield handle.frames_ready
    finally:
        if not handle.done:
            handle.cancel()
