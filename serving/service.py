"""One replica's model behind the HTTP API: admission, the requests in flight, the watchdog and shutdown.

Framework-free (no Ray, no FastAPI), so the rules are plain Python: ``http`` turns its results and errors
into responses, ``deployment`` wraps it in a Ray Serve replica. Every request runs in the model's
continuous-batching engine (``MusicGen.submit``); this layer adds what a shared node needs around it: limits,
seeds reported back, one decode path for streamed and whole clips, a stall detector, and a drain on shutdown.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import soundfile as sf
from musicgen_onnx.runtime import MusicGen, QueueFullError, RequestCancelledError

from .config import ServeConfig
from .formats import to_pcm16
from .metrics import EngineFigures
from .schema import GenerationBody, InvalidRequestError

logger = logging.getLogger("musicgen_onnx")

__all__ = ["Generation", "MusicGenService", "ServiceError"]


class ServiceError(Exception):
    """An answer other than success: HTTP status, the message shown to the client, extra headers."""

    def __init__(self, status: int, message: str, kind: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind
        self.headers = headers or {}


@dataclass(eq=False)  # identity: kept in the set of requests in flight
class Generation:
    """One request in flight on this replica: its submission, what to report, and how to stop it."""

    service: MusicGenService
    submission: object  # runtime.Submission
    body: GenerationBody
    seed: int
    duration: float
    started: float = field(default_factory=time.monotonic)
    exclusive: threading.Lock | None = None  # held while generating when the export runs one request at a time
    samples_sent: int = 0
    first_audio_at: float | None = None  # time.monotonic() of the first decoded piece (access log, metrics)
    ended: str | None = None  # why it ended early: "cancelled", "timeout", "shutdown"

    @property
    def sampling_rate(self) -> int:
        return self.service.model.sampling_rate

    @property
    def channels(self) -> int:
        return self.service.model.channels

    @property
    def total_samples(self) -> int:
        return round(self.duration * self.sampling_rate)

    def pcm_chunks(self) -> Iterator[bytes]:
        """Interleaved int16 pieces as the engine makes them (blocking: run it in a worker thread)."""
        try:
            with (
                self.exclusive or contextlib.nullcontext(),
                self.submission.stream(self.service.config.chunk_seconds) as chunks,
            ):
                for chunk in chunks:
                    if self.first_audio_at is None:
                        self.first_audio_at = time.monotonic()
                    self.samples_sent += chunk.audio.shape[-1]
                    yield to_pcm16(chunk.audio[0])
        except RequestCancelledError:
            if self.ended == "shutdown":
                raise ServiceError(503, "the replica is shutting down; retry the request", "unavailable") from None
            raise
        finally:
            self.service._finished(self)

    def cancel(self, reason: str = "cancelled") -> None:
        """Free the request's decoder rows at the engine's next step (client gone, timeout, shutdown)."""
        if self.ended is None:
            self.ended = reason
        self.submission.cancel()


class MusicGenService:
    """Loads the export once, warms it up, and runs requests with the limits of ``ServeConfig``."""

    def __init__(self, config: ServeConfig, model: MusicGen | None = None) -> None:
        self.config = config
        t0 = time.perf_counter()
        self.model = model or MusicGen.load(
            config.model_dir,
            provider=config.provider,
            threads=config.threads,
            verify=config.verify,
            allow_spinning=config.allow_spinning,
            max_batch=config.max_batch,
            max_seconds=config.max_seconds,
            max_queued=config.max_queued,
        )
        self.load_seconds = time.perf_counter() - t0
        self._lock = threading.Lock()
        self._in_flight: set[Generation] = set()
        self._solo = threading.Lock()  # exports without the batching engine run one request at a time
        self._closing = False
        self._watch_steps, self._watch_since = -1, time.monotonic()
        self.warmup_seconds = 0.0
        if config.warmup_seconds > 0:
            t0 = time.perf_counter()
            self.model.generate("warm-up", duration=config.warmup_seconds, do_sample=False)
            # EnCodec's activation memory for the longest decode a request may ask for (capped at one call)
            self.model.warm_up_codec(config.max_seconds)
            self.warmup_seconds = time.perf_counter() - t0
        logger.info(
            "serving %s (%s, %s) on %s: loaded in %.1f s, warm-up %.1f s",
            config.model_dir,
            self.model.manifest.source,
            self.model.manifest.precision,
            self.model.device,
            self.load_seconds,
            self.warmup_seconds,
        )

    # ---- requests ------------------------------------------------------------------------------------
    def start(self, body: GenerationBody, prompt: bytes | None = None, melody: bytes | None = None) -> Generation:
        """Validate and submit; raises ServiceError (422, 429, 503) before any generation work. ``prompt`` and
        ``melody``: uploaded audio files (any rate: the runtime resamples them)."""
        if self._closing:
            raise ServiceError(503, "the replica is shutting down; retry the request", "unavailable")
        cfg = self.config
        duration = cfg.default_duration if body.duration is None else body.duration
        if not 0 < duration <= cfg.max_duration:
            raise ServiceError(
                422, f"duration must be in (0, {cfg.max_duration:g}] seconds, got {duration:g}", "invalid_request_error"
            )
        seed = secrets.randbelow(2**31) if body.seed is None else body.seed
        kwargs = dict(
            duration=duration,
            seed=seed,
            guidance_scale=body.guidance_scale,
            top_k=body.top_k,
            top_p=body.top_p,
            temperature=body.temperature,
        )
        if prompt is not None:
            kwargs["prompt_audio"], kwargs["prompt_sample_rate"] = self._decode_audio(prompt, "audio_prompt")
        if melody is not None:
            m = self.model.manifest
            if m.conditioning != "prefix":
                raise InvalidRequestError(
                    f"this server's model ({m.source}) takes no melody: melody conditioning needs an export of "
                    "facebook/musicgen-melody, -melody-large, -stereo-melody or -stereo-melody-large"
                )
            audio, rate = self._decode_audio(melody, "melody")
            kwargs["melody"], kwargs["melody_sample_rate"] = audio.mean(axis=0, dtype=np.float32), rate  # mono mix
        batcher = self.model.batcher
        with self._lock:
            if batcher is None and len(self._in_flight) >= 1 + cfg.max_queued:
                raise self._busy(f"1 request running and {cfg.max_queued} waiting (max_queued={cfg.max_queued})")
        try:
            submission = self.model.submit(body.input, **kwargs)
        except QueueFullError as exc:
            raise self._busy(str(exc)) from None
        except ValueError as exc:  # the runtime's own range checks: its message names the valid values
            raise ServiceError(422, str(exc), "invalid_request_error") from None
        generation = Generation(self, submission, body, seed, duration, self._solo if batcher is None else None)
        with self._lock:
            self._in_flight.add(generation)
        return generation

    def _busy(self, why: str) -> ServiceError:
        return ServiceError(
            429,
            f"the server is at capacity ({why}); retry after {self.config.retry_after_s} s",
            "rate_limit_exceeded",
            {"Retry-After": str(self.config.retry_after_s)},
        )

    def _decode_audio(self, data: bytes, field: str) -> tuple[np.ndarray, int]:
        """An uploaded file -> ([channels, samples] float32, sample rate)."""
        try:
            audio, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
        except Exception as exc:  # libsndfile's own message says what it could not read
            raise InvalidRequestError(f"{field} is not an audio file libsndfile can read: {exc}") from None
        if audio.shape[0] == 0:
            raise InvalidRequestError(f"{field} holds no samples")
        return audio.T, int(sr)

    def _finished(self, generation: Generation) -> None:
        with self._lock:
            self._in_flight.discard(generation)

    @property
    def in_flight(self) -> int:
        with self._lock:
            return len(self._in_flight)

    def engine_figures(self) -> EngineFigures:
        """The engine's public counters for the metrics (docs/design.md §20): steps, rows generating, requests
        waiting. Without the batching engine one request runs at a time and the others wait."""
        batcher, in_flight = self.model.batcher, self.in_flight
        if batcher is None:
            return EngineFigures(None, min(in_flight, 1), max(in_flight - 1, 0), in_flight)
        return EngineFigures(batcher.steps, batcher.active, batcher.queued, in_flight)

    # ---- health --------------------------------------------------------------------------------------
    def health(self) -> dict:
        """The replica's state; raises ServiceError(503) when it must be replaced (closing, or the step loop
        stalled: work waiting and no decoder step for ``stall_after_s``)."""
        report = {"status": "ok", "pid": os.getpid(), "rss_mb": _rss_mb(), "in_flight": self.in_flight}
        batcher = self.model.batcher
        if batcher is not None:
            busy = batcher.has_work  # cancelled-but-unreaped parts count: only a stepping loop reaps
            now = time.monotonic()
            if batcher.steps != self._watch_steps or not busy:
                self._watch_steps, self._watch_since = batcher.steps, now
            stalled_for = now - max(self._watch_since, batcher.last_step_at) if busy else 0.0
            report["engine"] = {
                "steps": batcher.steps,
                "active": batcher.active,
                "queued": batcher.queued,
                "seconds_without_step": round(stalled_for, 3),
            }
            if stalled_for > self.config.stall_after_s:
                raise ServiceError(
                    503,
                    f"the decoder loop has made no step for {stalled_for:.0f} s with requests waiting "
                    f"(stall_after_s={self.config.stall_after_s:g}); the replica needs replacing",
                    "unavailable",
                )
        if self._closing:
            raise ServiceError(503, "the replica is shutting down", "unavailable")
        return report

    def describe(self) -> dict:
        """``GET /v1/models``: what this replica serves."""
        m, model = self.model.manifest, self.model
        batcher = model.batcher
        return {
            "object": "list",
            "data": [
                {
                    "id": m.source,
                    "object": "model",
                    "owned_by": "musicgen-onnx",
                    "precision": m.precision,
                    "random_weights": m.random_weights,
                    "device": model.device,
                    "providers": model.providers,
                    "sampling_rate": model.sampling_rate,
                    "channels": model.channels,
                    "conditioning": m.conditioning,
                    "max_duration": self.config.max_duration,
                    "default_duration": self.config.default_duration,
                    "max_batch": self.config.max_batch if batcher is not None else 1,
                    "max_queued": self.config.max_queued,
                    "audio_prompt": True,
                    "melody": m.conditioning == "prefix",
                }
            ],
        }

    def stall(self, seconds: float) -> None:
        """Fault drill: hold the decoder loop (only with ``fault_injection``)."""
        if not self.config.fault_injection or self.model.batcher is None:
            raise ServiceError(404, "not found", "not_found")
        try:
            self.model.batcher.suspend(seconds)
        except ValueError as exc:
            raise InvalidRequestError(str(exc)) from None

    # ---- shutdown ------------------------------------------------------------------------------------
    def close(self, grace_s: float = 10.0) -> None:
        """Refuse new requests, let those in flight finish for up to ``grace_s``, cancel the rest (their
        clients get 503 "shutting down", or a stream that ends early), then stop the engine."""
        self._closing = True
        deadline = time.monotonic() + grace_s
        while self.in_flight and time.monotonic() < deadline:
            time.sleep(0.05)
        with self._lock:
            left = list(self._in_flight)
        for generation in left:
            generation.cancel("shutdown")
        if left:
            logger.warning("shutdown: cancelled %d request(s) still running after %.0f s", len(left), grace_s)
        self.model.close()


def _rss_mb() -> float | None:
    """This process's resident memory (Linux /proc), for operators watching replicas; None elsewhere."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
