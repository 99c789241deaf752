"""The metrics and the access log wired into the app (docs/design.md §20), so ``deployment`` adds them with
two calls: ``install(api)`` when the FastAPI app is made, ``start(service)`` in each replica.

One replica per process (Ray runs each in its own actor), so the replica's ``ServingMetrics`` and engine
sampler are this process's: the middleware and the ``GET /metrics`` route find them here.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import FastAPI, Response

from . import access_log
from .metrics import CONTENT_TYPE, EngineSampler, ServingMetrics
from .service import MusicGenService

__all__ = ["install", "replica_metrics", "start"]


@dataclass
class _Replica:
    metrics: ServingMetrics | None = None
    sampler: EngineSampler | None = None


_replica = _Replica()  # this process's replica


def replica_metrics() -> ServingMetrics | None:
    """This process's metrics; None before its replica started (the request is then only logged)."""
    return _replica.metrics


async def metrics_endpoint() -> Response:
    """``GET /metrics``: this replica's metrics in Prometheus' text format. Module level, not a closure: Ray
    pickles the app into the replica, and a module-level function is pickled by reference, so it reads this
    process's ``_replica`` (a closure would carry a copy of the driver's, empty)."""
    if _replica.metrics is None:
        return Response("the replica is starting\n", 503, media_type="text/plain")
    if _replica.sampler is not None:
        _replica.sampler.sample()  # the gauges as of this scrape
    return Response(_replica.metrics.exposition(), media_type=CONTENT_TYPE)


def install(api: FastAPI) -> None:
    """The access-log middleware (request id, JSON line, request metrics) and ``GET /metrics``. Ray's proxy
    already echoes the request id it forwards, so the middleware adds the header only when it replaced one."""
    api.add_middleware(access_log.AccessLogMiddleware, metrics=replica_metrics, echo_incoming_id=False)
    api.add_api_route("/metrics", metrics_endpoint, methods=["GET"])


def start(service: MusicGenService) -> EngineSampler:
    """In a replica's ``__init__``: the access log to stderr, the metrics (both sinks), the engine sampler."""
    access_log.configure()
    if _replica.metrics is None:
        _replica.metrics = ServingMetrics(ray=True)
    if _replica.sampler is not None:
        _replica.sampler.stop()
    _replica.sampler = EngineSampler(_replica.metrics, service.engine_figures).start()
    return _replica.sampler
