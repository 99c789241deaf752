"""Continuous batching: one decoder loop per model, shared by every request in flight.

Requests are submitted from any thread; a single engine thread owns the decoder rows (``slots.SlotDecoder``)
and runs one step at a time over every active request. A request joins at the next step boundary when enough
slots are free, and leaves when it is finished, stopped or cancelled, without waiting for the others. Each
request keeps its own text conditioning, position, sampling options, random stream (from its own seed),
length, audio prompt and long-form windows, so its codes do not depend on what else is in the batch
(docs/design.md §17).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

import numpy as np
import onnxruntime as ort

from .engine import Engine
from .generation import DelayPatternState, build_delay_pattern, choose_tokens
from .job import GenerationRequest
from .melody import MelodyCondition
from .melody_slots import MelodySlotDecoder, prefix_budget
from .plan import Window
from .requests import QueueFullError, RequestCancelledError, RequestHandle, follow
from .rows import row_random
from .sampler import GraphSampler
from .slots import SlotDecoder

logger = logging.getLogger("musicgen_onnx")

# The request side (handle, errors, follow) lives in ``requests``; re-exported for callers of this module.
__all__ = ["BatchEngine", "QueueFullError", "RequestCancelledError", "RequestHandle", "follow"]


class _Run:
    """Engine-thread state of one admitted request: its slots and the window being generated."""

    def __init__(self, handle: RequestHandle, slots: list[int], engine: Engine) -> None:
        self.handle = handle
        self.slots = slots
        self.rng = row_random(handle.request.seed, handle.request.rows)
        self.options = handle.request.options
        self.cfg = not handle.conditioning.unconditional and self.options.guidance_scale > 1
        self.windows = list(handle.request.plan.windows)
        self.window: Window | None = None
        self.state: DelayPatternState | None = None
        self.prefill: np.ndarray | None = None  # [B, K, start_len]
        self.fed = 0  # columns of the current window fed to the decoder
        self.done_frames = 0  # frames of the current window already in the buffer
        self.sampler: GraphSampler | None = None  # token selection in the exported sampler graph (device sampling)
        if engine.sampler is not None:
            d = engine.manifest.decoder
            o = self.options
            self.sampler = GraphSampler(engine.sampler, d.vocab_size, d.num_codebooks, engine.device)
            scale = o.guidance_scale if self.cfg else 1.0
            self.sampler.start(handle.request.batch, scale, o.temperature, o.top_k, o.top_p, o.do_sample)


class BatchEngine:
    """Batches the requests of one model into a fixed number of decoder slots; see the module docstring."""

    def __init__(
        self,
        engine: Engine,
        max_batch: int = 4,
        max_seconds: float = 30.0,
        max_queued: int = 64,
        full_rows: bool | None = None,
    ) -> None:
        m = engine.manifest
        if not m.decoder.kv_cache.in_place:
            raise ValueError("continuous batching needs a static-cache export (--kv-cache static, the default)")
        for name, value in (("max_batch", max_batch), ("max_queued", max_queued)):
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name == "max_batch" else 0):
                raise ValueError(f"{name} must be an integer >= {1 if name == 'max_batch' else 0}, got {value!r}")
        fr, c = m.audio.frame_rate, m.codebooks_per_channel
        longest = (m.decoder.max_positions - c) / fr
        if isinstance(max_seconds, bool) or not isinstance(max_seconds, (int, float)) or not 0 < max_seconds <= longest:
            raise ValueError(f"max_seconds must be in (0, {longest:g}] for this model, got {max_seconds!r}")
        self.engine = engine
        self.max_batch, self.max_seconds, self.max_queued = max_batch, float(max_seconds), max_queued
        # one window of max_seconds: start column + frames + (C - 1) delay columns
        self.cache_length = min(m.decoder.max_positions, int(np.floor(max_seconds * fr + 1e-6)) + c)
        self.full_rows = engine.fixed_buffers if full_rows is None else full_rows
        self.melody = m.conditioning == "prefix"
        if self.melody:  # each slot's cache holds its conditioning prefix before the window (docs/design.md §18)
            if self.full_rows:
                raise ValueError("melody exports batch in the compact CPU layout only (their prefix is not tokens)")
            length = self.cache_length + prefix_budget(m)
            self.decoder = MelodySlotDecoder(engine.decoder, m, max_batch, length, engine.device)
        else:
            self.decoder = SlotDecoder(
                engine.decoder,
                m,
                max_batch,
                self.cache_length,
                engine.device,
                self.full_rows,
                graph_id=1 if engine.cuda_graph else -1,
            )
        self._lock = threading.Condition()
        self._pending: deque[RequestHandle] = deque()
        self._runs: list[_Run] = []
        self._free = list(range(max_batch))
        self._callers = 0  # submit_all calls so far: the parts of one call share a number
        self._closed = False
        self._thread: threading.Thread | None = None
        self.steps = 0  # decoder steps run (for tests and monitoring)
        self.last_step_at = time.monotonic()  # when the last step ended (or the engine was made): for watchdogs
        self._suspended_until = 0.0

    # ---- client side -------------------------------------------------------------------------------
    def submit(self, request: GenerationRequest) -> RequestHandle:
        """Condition ``request`` (text encoder, audio prompt) in the calling thread and queue it.

        Accepted when it can start at the next step (enough free slots) or fewer than ``max_queued``
        requests are waiting; otherwise ``QueueFullError``, before any work is done."""
        return self.submit_all([request])[0]

    def submit_all(self, requests: list[GenerationRequest]) -> list[RequestHandle]:
        """Queue the parts of one caller's call together (``waves.split_request``), in order; each starts as
        soon as its rows fit in the free slots.

        The queue bound counts callers, not parts: the call is accepted when its first ``max_batch`` rows could
        start now or fewer than ``max_queued`` other requests are waiting, and then counts as one waiting request
        however many of its rows wait. All or none of the parts are queued. The parts share one condition variable
        and one list of step times (a ``waves.RequestGroup`` follows them as one request)."""
        for request in requests:
            self._check_fits(request)
        first = min(sum(r.batch for r in requests), self.max_batch)
        with self._lock:
            self._check_room(first)
        changed = threading.Condition()
        handles = [self._prepare(request, changed) for request in requests]
        for handle in handles[1:]:
            handle.step_times, handle.prefill_times = handles[0].step_times, handles[0].prefill_times
        with self._lock:
            if self._closed:
                raise RuntimeError("the batching engine is closed")
            self._check_room(first)
            self._callers += 1
            for handle in handles:
                handle.caller = self._callers
            self._pending.extend(handles)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="musicgen-onnx-engine", daemon=True)
                self._thread.start()
            self._lock.notify_all()
        return handles

    def _prepare(self, request: GenerationRequest, changed: threading.Condition) -> RequestHandle:
        """The handle of ``request``, conditioned (text encoder, audio prompt) in the calling thread."""
        t0 = time.perf_counter()
        engine = self.engine
        prompt_codes = None if request.prompt_audio is None else engine.encode_audio(request.prompt_audio)
        audio_encode = time.perf_counter() - t0
        conditioning = engine.condition(request.texts, request.batch, request.melody)
        if isinstance(conditioning, MelodyCondition):  # every window's prefix now, not in the engine thread
            hop = engine.manifest.audio.hop_length
            cfg = not conditioning.unconditional and request.options.guidance_scale > 1
            with engine.gate:
                conditioning.prepare_windows([w.start * hop for w in request.plan.windows], cfg)
        d = engine.manifest.decoder
        handle = RequestHandle(request, conditioning, prompt_codes, d.num_codebooks, d.pad_token_id, changed)
        handle.timings = {"audio_encode": audio_encode, "text_encode": time.perf_counter() - t0 - audio_encode}
        return handle

    def _waiting(self) -> list[RequestHandle]:
        """Parts accepted and not started, without those cancelled or stopped while waiting (holding the lock)."""
        return [h for h in self._pending if not h.done]

    def _check_room(self, rows: int) -> None:
        """Raise QueueFullError unless ``rows`` prompts can start now or the caller may wait in the queue
        (holding the lock); waiting requests are counted by caller (``submit_all``)."""
        waiting = self._waiting()
        unreserved = len(self._free) - sum(h.request.batch for h in waiting)
        callers = len({h.caller for h in waiting})
        if unreserved >= rows or callers < self.max_queued:
            return
        raise QueueFullError(
            f"the engine is full: {self.max_batch - len(self._free)} of max_batch={self.max_batch} slots busy and "
            f"{callers} requests waiting (max_queued={self.max_queued}); retry later"
        )

    def _check_fits(self, request: GenerationRequest) -> None:
        if request.batch > self.max_batch:
            raise ValueError(
                f"the request has {request.batch} prompts but the model was loaded with max_batch={self.max_batch} "
                "slots: split it into parts (MusicGen.submit does, see waves.split_request)"
            )
        for w in request.plan.windows:
            columns = 1 + w.prompt + w.steps
            if columns > self.cache_length:
                fr = self.engine.manifest.audio.frame_rate
                raise ValueError(
                    f"window {w.index} of this request spans {w.length / fr:g} s ({columns} decoder positions), "
                    f"more than max_seconds={self.max_seconds:g} ({self.cache_length} positions) the model was "
                    "loaded with: use a shorter window, or load with a larger max_seconds"
                )

    def close(self) -> None:
        """Stop the engine thread; requests still running or waiting are cancelled."""
        with self._lock:
            self._closed = True
            self._lock.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()

    @property
    def active(self) -> int:
        """Requests being generated now."""
        with self._lock:
            return len(self._runs)

    @property
    def has_work(self) -> bool:
        """Runs in flight or parts the loop has not taken from the queue yet, cancelled ones included.

        Only the loop removes a part cancelled while it waited, so a loop that makes no step keeps it: a
        watchdog asks this, not ``queued``, or a stalled loop whose waiting client gave up would look idle."""
        with self._lock:
            return bool(self._runs or self._pending)

    @property
    def queued(self) -> int:
        """Requests accepted and waiting for free slots (a split call whose rows wait counts once)."""
        with self._lock:
            return len({h.caller for h in self._waiting()})

    def suspend(self, seconds: float) -> None:
        """Hold the step loop for ``seconds`` before its next step; requests keep their rows and wait.

        For fault drills: a watchdog over ``steps`` / ``last_step_at`` must see a loop that makes no progress
        (a hung device, a deadlock) and have the process replaced; this produces one on demand."""
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds <= 3600:
            raise ValueError(f"seconds must be a number in [0, 3600], got {seconds!r}")
        with self._lock:
            self._suspended_until = time.monotonic() + seconds

    # ---- engine thread -----------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._lock:
                self._lock.wait_for(lambda: self._closed or self._runs or self._pending)
                if self._closed:
                    for handle in [*self._pending, *(r.handle for r in self._runs)]:
                        handle.cancel()
                    return
                self._retire_ended()
                hold = self._suspended_until - time.monotonic()
                if hold > 0:
                    self._lock.wait(min(hold, 1.0))  # suspended (``suspend``): no step, re-check close and time
                    continue
                admitted = self._admit()
            try:
                for run in admitted:
                    self._start_window(run)
                if self._runs:
                    self._step()
            except Exception as exc:  # fail the requests in flight, keep serving the next ones
                logger.exception("decoder step failed")
                with self._lock:
                    for run in self._runs:
                        run.handle._update(error=exc)
                    self._retire_ended()

    def _admit(self) -> list[_Run]:
        admitted = []
        if any(h.done for h in self._pending):  # cancelled or stopped while waiting: never start, reserve nothing
            self._pending = deque(self._waiting())
        while self._pending and len(self._free) >= self._pending[0].request.batch:
            handle = self._pending.popleft()
            if handle.done:  # cancelled while waiting
                continue
            self._free.sort()
            slots, self._free = self._free[: handle.request.batch], self._free[handle.request.batch :]
            run = _Run(handle, slots, self.engine)
            for b, slot in enumerate(slots if not self.melody else ()):  # melody: the prefix comes with the prefill
                cond = handle.conditioning
                self.decoder.set_text(slot, [kv[b] for kv in cond.cross_kv], cond.text_mask[b])
            handle._update(started=time.perf_counter())
            self._runs.append(run)
            admitted.append(run)
        return admitted

    def _retire_ended(self) -> None:
        """Free the slots of every run that finished, stopped, failed or was cancelled (holding the lock)."""
        for run in [r for r in self._runs if r.handle.done]:
            self._runs.remove(run)
            self._free += run.slots

    def _start_window(self, run: _Run) -> None:
        """Begin ``run``'s next window: its delay-pattern state, and the multi-token prefill where possible."""
        handle = run.handle
        w = run.windows.pop(0)
        given = handle.prompt_codes if w.index == 0 else handle.buffer[..., w.start : w.start + w.prompt].copy()
        handle.window_prompts.append(given)
        d = self.engine.manifest.decoder
        ids, pattern = build_delay_pattern(
            given,
            batch_size=handle.request.batch,
            num_codebooks=d.num_codebooks,
            channels=self.engine.channels,
            max_length=1 + (0 if given is None else given.shape[-1]) + w.steps,
            pad_token_id=d.pad_token_id,
        )
        run.window, run.done_frames, run.fed = w, w.prompt, 0
        run.state = DelayPatternState(ids, pattern, pad_token_id=d.pad_token_id, channels=self.engine.channels)
        run.prefill = run.state.prefill_ids()
        start_len = run.prefill.shape[-1]
        if (start_len > 1 or self.melody) and not self.full_rows:
            t0 = time.perf_counter()
            pairs = [np.repeat(run.prefill[b : b + 1], 2, axis=0) for b in range(len(run.slots))]
            if self.melody:  # the window's prefix (its melody slice) before its columns
                prefixes = handle.conditioning.window_prefixes(w.start * self.engine.manifest.audio.hop_length)
                pairs = [(pair, prefix) for pair, prefix in zip(pairs, prefixes, strict=True)]
            else:
                pairs = [(pair,) for pair in pairs]
            with self.engine.gate:
                logits = [self.decoder.prefill(slot, *args) for slot, args in zip(run.slots, pairs, strict=True)]
            run.fed = start_len
            self._sample(run, np.stack(logits))
            handle.prefill_times.append(time.perf_counter() - t0)

    def _step(self) -> None:
        t0 = time.perf_counter()
        dec = self.decoder
        dec.ids[:] = self.engine.manifest.decoder.pad_token_id
        dec.positions[:] = 0
        for run in self._runs:
            state = run.state
            if run.fed < run.prefill.shape[-1]:  # a prompt column fed as a forced token
                column, position = run.prefill[..., run.fed : run.fed + 1], run.fed
            else:
                column, position = state.step_ids(), state.length - 1
            for b, slot in enumerate(run.slots):
                dec.ids[2 * slot : 2 * slot + 2] = column[b]
                dec.positions[2 * slot : 2 * slot + 2] = position
        busy = [s for run in self._runs for s in run.slots]
        first = 0 if self.full_rows else 2 * min(busy)  # idle slots below the busy ones cost nothing
        with self.engine.gate:  # one onnxruntime pool at a time: the clients' EnCodec decodes wait their turn
            logits = dec.step(2 * (max(busy) + 1), first)
        self.steps += 1
        self.last_step_at = time.monotonic()
        for run in list(self._runs):
            start_len = run.prefill.shape[-1]
            if run.fed < start_len:
                run.fed += 1
                if run.fed < start_len:
                    continue  # more prompt columns to feed: these logits are not used
            per_slot = np.stack([logits[2 * s - first : 2 * s - first + 2] for s in run.slots])
            self._sample(run, per_slot)
        elapsed = time.perf_counter() - t0
        for times in {id(r.handle.step_times): r.handle.step_times for r in self._runs}.values():
            times.append(elapsed)  # once per step for the parts of one call, which share their list
        with self._lock:
            self._retire_ended()

    def _sample(self, run: _Run, logits: np.ndarray) -> None:
        """Choose the next column of ``run`` from its rows' logits [B, 2 (cond, uncond), K, vocab]."""
        options = run.options
        vocab = logits.shape[-1]
        rows = np.concatenate([logits[:, 0], logits[:, 1]]) if run.cfg else logits[:, 0]
        state = run.state
        if run.sampler is not None:  # the same rows and uniforms, through the sampler graph
            value = ort.OrtValue.ortvalue_from_numpy(rows.astype(self.decoder.dtype), self.engine.device, 0)
            with self.engine.gate:
                tokens = run.sampler.sample(value, run.rng)
            state.write(tokens)
            self._collect(run)
            return
        tokens = choose_tokens(
            rows.reshape(-1, vocab),
            guidance_scale=options.guidance_scale if run.cfg else None,
            do_sample=options.do_sample,
            temperature=options.temperature,
            top_k=options.top_k or None,
            top_p=options.top_p,
            rng=run.rng,
        )
        state.write(tokens)
        self._collect(run)

    def _collect(self, run: _Run) -> None:
        """Move newly final frames into the request's buffer; start the next window or finish."""
        handle, w, state = run.handle, run.window, run.state
        total = handle.request.plan.total_frames
        ready = min(state.frames_ready, w.length)
        frames = handle.frames_ready
        if ready > run.done_frames:
            handle.buffer[..., w.start + run.done_frames : w.start + ready] = state.frames(run.done_frames, ready)
            run.done_frames = ready
            frames = w.start + ready
        if frames >= total:
            handle._update(frames_ready=frames, finished=True)
        elif state.done:
            if run.done_frames != w.length:
                raise RuntimeError(f"window {w.index} ended with {run.done_frames} of {w.length} frames")
            handle._update(frames_ready=frames)
            if not handle.done:
                self._start_window(run)
        elif frames != handle.frames_ready:
            handle._update(frames_ready=frames)
