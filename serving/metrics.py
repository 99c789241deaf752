"""A replica's Prometheus metrics: each defined once here, fed to two sinks (docs/design.md §20).

- **Ray's metrics endpoint.** ``ray.serve.metrics`` objects: Ray's metrics agent on every node exports them
  (as ``ray_<name>``) with the deployment, replica and application tags, so one scrape config for the Ray
  cluster covers every replica.
- **``GET /metrics`` on the app.** A ``prometheus_client`` registry of this replica, in Prometheus' text
  format: what a request reaching this replica can read without Ray's agent (one replica's figures; behind
  several replicas the proxy picks one, so scrape Ray's endpoint for the whole deployment).

Both sinks receive the same updates from one ``ServingMetrics``: request outcomes from the access-log
middleware (``access_log``), engine figures (queue, rows, steps) from a sampler thread reading the engine's
public counters. The runtime knows nothing of this module (it never imports serving or prometheus).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client import Counter as PromCounter
from prometheus_client import Gauge as PromGauge
from prometheus_client import Histogram as PromHistogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .access_log import Outcome

if TYPE_CHECKING:
    from .access_log import AccessRecord

logger = logging.getLogger("musicgen_onnx")

__all__ = ["CONTENT_TYPE", "METRICS", "EngineFigures", "EngineSampler", "MetricSpec", "ServingMetrics"]

CONTENT_TYPE = CONTENT_TYPE_LATEST
GENERATION_ROUTE = "/v1/audio/generations"


class Kind(Enum):
    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


@dataclass(frozen=True)
class MetricSpec:
    """One metric as both sinks declare it. ``name`` is the base name: counters are exported with ``_total``
    appended (``ray_`` in front on Ray's endpoint)."""

    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()


REQUESTS = MetricSpec(
    "musicgen_requests", Kind.COUNTER, "HTTP requests answered, by route and status", ("route", "status")
)
THROTTLED = MetricSpec("musicgen_throttled_requests", Kind.COUNTER, "generation requests answered 429 (at capacity)")
TIMEOUTS = MetricSpec(
    "musicgen_request_timeouts",
    Kind.COUNTER,
    "generation requests cut at request_timeout_s: 408 for whole clips, an early end for streams",
    ("stream",),
)
AUDIO_SECONDS = MetricSpec("musicgen_audio_seconds", Kind.COUNTER, "seconds of audio generated", ("stream",))
STEPS = MetricSpec("musicgen_decoder_steps", Kind.COUNTER, "decoder steps run by the replica's batching engine")
STEP_RATE = MetricSpec(
    "musicgen_decoder_steps_per_second", Kind.GAUGE, "decoder steps per second over the last sampling interval"
)
QUEUE = MetricSpec("musicgen_queue_depth", Kind.GAUGE, "requests accepted and waiting for a decoder row")
ROWS = MetricSpec("musicgen_active_rows", Kind.GAUGE, "decoder rows generating now (one per request being generated)")
IN_FLIGHT = MetricSpec("musicgen_requests_in_flight", Kind.GAUGE, "generation requests admitted and not yet finished")
FIRST_AUDIO = MetricSpec(
    "musicgen_time_to_first_audio_seconds",
    Kind.HISTOGRAM,
    "request arrival to its first decoded audio piece",
    ("stream",),
    (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0),
)
LATENCY = MetricSpec(
    "musicgen_request_latency_seconds",
    Kind.HISTOGRAM,
    "whole generation request, arrival to last byte, for requests that completed",
    ("stream",),
    (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0),
)
RTF = MetricSpec(
    "musicgen_real_time_factor",
    Kind.HISTOGRAM,
    "generation time / clip length of completed requests (below 1: faster than real time)",
    ("stream",),
    (0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0, 8.0, 16.0),
)

METRICS = (REQUESTS, THROTTLED, TIMEOUTS, AUDIO_SECONDS, STEPS, STEP_RATE, QUEUE, ROWS, IN_FLIGHT)
METRICS += (FIRST_AUDIO, LATENCY, RTF)


class Sink(Protocol):
    """Where updates go: a metrics library's objects for every spec of ``METRICS``."""

    def add(self, spec: MetricSpec, value: float, labels: dict[str, str]) -> None: ...
    def set(self, spec: MetricSpec, value: float, labels: dict[str, str]) -> None: ...
    def observe(self, spec: MetricSpec, value: float, labels: dict[str, str]) -> None: ...


class PrometheusSink:
    """``prometheus_client`` objects in a registry of their own (not the process-global one), rendered by
    ``GET /metrics``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        kinds = {Kind.COUNTER: PromCounter, Kind.GAUGE: PromGauge}
        self._objects = {}
        for spec in METRICS:
            if spec.kind is Kind.HISTOGRAM:
                made = PromHistogram(spec.name, spec.help, spec.labels, registry=self.registry, buckets=spec.buckets)
            else:
                made = kinds[spec.kind](spec.name, spec.help, spec.labels, registry=self.registry)
            self._objects[spec.name] = made

    def _get(self, spec: MetricSpec, labels: dict[str, str]):
        made = self._objects[spec.name]
        return made.labels(**labels) if spec.labels else made

    def add(self, spec: MetricSpec, value: float, labels: dict[str, str]) -> None:
        self._get(spec, labels).inc(value)

    def set(self, spec: MetricSpec, value: float, labels: dict[str, str]) -> None:
        self._get(spec, labels).set(value)

    def observe(self, spec: MetricSpec, value: float, labels: dict[str, str]) -> None:
        self._get(spec, labels).observe(value)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class RaySink:
    """``ray.serve.metrics`` objects: exported by Ray's metrics agent with the replica's Serve tags. Only in a
    process connected to Ray (a replica); Ray is imported here, not at module import."""

    def __init__(self) -> None:
        from ray.serve import metrics as ray_metrics

        self._objects = {}
        for spec in METRICS:
            if spec.kind is Kind.HISTOGRAM:
                made = ray_metrics.Histogram(spec.name, spec.help, list(spec.buckets), spec.labels or None)
            elif spec.kind is Kind.COUNTER:
                made = ray_metrics.Counter(spec.name, spec.help, spec.labels or None)
            else:
                made = ray_metrics.Gauge(spec.name, spec.help, spec.labels or None)
            self._objects[spec.name] = made

    def add(self, spec: MetricSpec, value: float, labels: dict[str, str]) -> None:
        if value > 0:  # Ray's counters refuse 0
            self._objects[spec.name].inc(value, dict(labels))

    def set(self, spec: MetricSpec, value: float, labels: dict[str, str]) -> None:
        self._objects[spec.name].set(value, dict(labels))

    def observe(self, spec: MetricSpec, value: float, labels: dict[str, str]) -> None:
        self._objects[spec.name].observe(value, dict(labels))


@dataclass(frozen=True)
class EngineFigures:
    """The engine's public counters at one moment (``MusicGenService.engine_figures``)."""

    steps: int | None  # decoder steps since the engine started; None without a batching engine
    active: int  # rows generating
    queued: int  # requests waiting for rows
    in_flight: int  # requests admitted by the service and not finished


class ServingMetrics:
    """The one place that turns events into metric updates, for every sink alike."""

    def __init__(self, *, ray: bool = False) -> None:
        self.prometheus = PrometheusSink()
        self.sinks: list[Sink] = [self.prometheus]
        if ray:
            self.sinks.append(RaySink())
        self._lock = threading.Lock()
        self._last_steps: int | None = None

    def _each(self, method: str, spec: MetricSpec, value: float, **labels: str) -> None:
        for sink in self.sinks:
            getattr(sink, method)(spec, value, labels)

    def exposition(self) -> bytes:
        """This replica's metrics in Prometheus' text format (``GET /metrics``)."""
        return self.prometheus.exposition()

    # ---- events --------------------------------------------------------------------------------------
    def request_done(self, record: AccessRecord) -> None:
        """One answered request (the access-log middleware calls this once per request, streams at their end)."""
        self._each("add", REQUESTS, 1, route=record.route, status=str(record.status))
        if record.route != GENERATION_ROUTE:
            return
        stream = str(bool(record.stream)).lower()
        if record.status == 429:
            self._each("add", THROTTLED, 1)
        if record.status == 408 or record.outcome is Outcome.TIMEOUT:
            self._each("add", TIMEOUTS, 1, stream=stream)
        if record.seconds_generated:
            self._each("add", AUDIO_SECONDS, record.seconds_generated, stream=stream)
        if record.first_audio_s is not None:
            self._each("observe", FIRST_AUDIO, record.first_audio_s, stream=stream)
        if record.status == 200 and record.outcome is Outcome.OK:
            self._each("observe", LATENCY, record.latency_s, stream=stream)
            if record.seconds_generated:
                self._each("observe", RTF, record.latency_s / record.seconds_generated, stream=stream)

    def engine(self, figures: EngineFigures, rate: float | None = None) -> None:
        """Engine gauges and the step counter from one reading; ``rate``: steps/s when the caller measured it."""
        with self._lock:
            if figures.steps is not None:
                last, self._last_steps = self._last_steps, figures.steps
                if last is not None and figures.steps > last:
                    self._each("add", STEPS, figures.steps - last)
            self._each("set", QUEUE, figures.queued)
            self._each("set", ROWS, figures.active)
            self._each("set", IN_FLIGHT, figures.in_flight)
            if rate is not None:
                self._each("set", STEP_RATE, rate)


class EngineSampler:
    """Reads the engine every ``interval_s`` in a daemon thread (Ray's sink needs values pushed; the rate of
    steps needs two readings apart in time); ``GET /metrics`` also reads it once before rendering."""

    def __init__(self, metrics: ServingMetrics, read: Callable[[], EngineFigures], interval_s: float = 2.0) -> None:
        self.metrics, self.read, self.interval_s = metrics, read, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="musicgen-onnx-metrics", daemon=True)

    def start(self) -> EngineSampler:
        self._thread.start()
        return self

    def sample(self) -> None:
        self.metrics.engine(self.read())

    def _run(self) -> None:
        before, t0 = None, time.monotonic()
        while not self._stop.is_set():
            try:
                figures = self.read()
                now = time.monotonic()
                rate = None
                if before is not None and figures.steps is not None and now > t0:
                    rate = max(0, figures.steps - before) / (now - t0)
                self.metrics.engine(figures, rate)
                before, t0 = figures.steps, now
            except Exception:  # a metrics failure must never take the replica down
                logger.exception("reading the engine for metrics failed")
            self._stop.wait(self.interval_s)

    def stop(self) -> None:
        self._stop.set()
