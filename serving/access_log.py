"""One structured JSON access-log line per request, and the request id (docs/design.md §20).

``AccessLogMiddleware`` wraps the whole ASGI app, so it sees every request from arrival to its last byte,
streams included (a stream is logged when it ends, however it ends: complete, timed out, or the client gone).
It picks the request id (the client's ``X-Request-Id`` when well formed, else a new one), returns it in the
``X-Request-Id`` response header on every answer, errors included, and when the request is over writes the
line on the ``musicgen_onnx.access`` logger and hands the same record to the metrics (``metrics``).

The route handlers add what only they know through ``record_of(request)``: the body's format, stream flag
and seconds requested, and the ``Generation`` whose samples and first-audio time are read at the end. The API
key layer leaves the key's id (never the key) in ``request.state.key_id``, read when the request is over; it
is None without keys.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import TYPE_CHECKING, Any

from starlette.datastructures import MutableHeaders

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from .metrics import ServingMetrics
    from .schema import GenerationBody
    from .service import Generation

ACCESS_LOGGER = "musicgen_onnx.access"
HEADER = "X-Request-Id"
_STATE_KEY = "musicgen_access"
KEY_ID_STATE = "key_id"  # request.state.key_id: set by the API-key layer (serving/auth.py)
_WELL_FORMED = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+=/-]{0,127}")

access_logger = logging.getLogger(ACCESS_LOGGER)

__all__ = ["ACCESS_LOGGER", "HEADER", "AccessLogMiddleware", "AccessRecord", "Outcome", "configure", "record_of"]


class Outcome(Enum):
    """How a request ended, beyond its status (a stream's status is sent before its outcome is known)."""

    OK = "ok"
    REJECTED = "rejected"  # answered 4xx: invalid, too large, at capacity, no access
    FAILED = "failed"  # answered 5xx, or a stream that ended early on an error
    TIMEOUT = "timeout"  # past request_timeout_s: 408, or a stream cut short
    DISCONNECTED = "disconnected"  # the client went away before the end
    SHUTDOWN = "shutdown"  # the replica was draining and cut it


@dataclass
class AccessRecord:
    """Everything the access-log line and the metrics say about one request."""

    id: str
    method: str
    path: str
    started: float = field(default_factory=time.monotonic)
    route: str = "unmatched"  # the route template (bounded label values for metrics), set at the end
    key_id: str | None = None  # which API key (its id, never the key); None without keys
    status: int | None = None
    outcome: Outcome = Outcome.OK
    stream: bool | None = None
    format: str | None = None
    seconds_requested: float | None = None
    seconds_generated: float | None = None
    latency_s: float | None = None
    first_audio_s: float | None = None
    generation: Generation | None = field(default=None, repr=False)
    disconnected: bool = False

    def note_body(self, body: GenerationBody, default_duration: float) -> None:
        """What the client asked for, as soon as the body parsed (so rejected requests are logged with it)."""
        self.stream, self.format = body.stream, body.response_format
        self.seconds_requested = default_duration if body.duration is None else body.duration

    def finish(self, now: float) -> None:
        """Fill the figures read at the end: latency, audio made, first audio, outcome."""
        self.latency_s = now - self.started
        g = self.generation
        if g is not None:
            self.seconds_generated = g.samples_sent / g.sampling_rate
            if g.first_audio_at is not None:
                self.first_audio_s = max(0.0, g.first_audio_at - self.started)
        self.outcome = self._outcome()

    def _outcome(self) -> Outcome:
        g = self.generation
        ended = None if g is None else g.ended
        if self.disconnected or ended == "cancelled":
            return Outcome.DISCONNECTED
        if ended == "timeout" or self.status == 408:
            return Outcome.TIMEOUT
        if ended == "shutdown":
            return Outcome.SHUTDOWN
        if self.status is None or self.status >= 500:
            return Outcome.FAILED
        if self.status >= 400:
            return Outcome.REJECTED
        if g is not None and g.samples_sent < g.total_samples:
            return Outcome.FAILED  # a stream that ended early on an error (logged where it happened)
        return Outcome.OK

    def line(self) -> str:
        """The JSON access-log line (one line: no newlines inside)."""
        values: dict[str, Any] = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "id": self.id,
            "key_id": self.key_id,
            "method": self.method,
            "route": self.route,
            "path": self.path,
            "status": self.status,
            "outcome": self.outcome.value,
            "stream": self.stream,
            "format": self.format,
            "seconds_requested": self.seconds_requested,
            "seconds_generated": _round(self.seconds_generated),
            "latency_s": _round(self.latency_s),
            "first_audio_s": _round(self.first_audio_s),
        }
        return json.dumps(values, separators=(",", ":"))


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def record_of(request: Request) -> AccessRecord | None:
    """The request's record (None when the app runs without the middleware)."""
    return request.scope.get("state", {}).get(_STATE_KEY)


def well_formed(request_id: str | None) -> bool:
    """A client's id is kept when it is 1-128 characters, starting alphanumeric, of ``A-Za-z0-9._:@+=/-``
    (UUIDs, ULIDs, trace ids), so a log line can never be split or forged through it."""
    return request_id is not None and _WELL_FORMED.fullmatch(request_id) is not None


class AccessLogMiddleware:
    """ASGI middleware: request id, one access-log line and the request metrics per HTTP request.

    ``metrics``: returns the process's ``ServingMetrics`` (None: log only). ``echo_incoming_id=False`` when a
    proxy in front already echoes the id it forwarded (Ray Serve's proxy does: it sets ``x-request-id`` on the
    request, generated when the client sent none, and copies it into the response); the header is then added
    here only when this middleware replaced an id that was not well formed, so a good id comes back once.
    """

    def __init__(
        self,
        app: ASGIApp,
        metrics: Callable[[], ServingMetrics | None] = lambda: None,
        echo_incoming_id: bool = True,
    ) -> None:
        self.app, self.metrics, self.echo_incoming_id = app, metrics, echo_incoming_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = _header(scope, b"x-request-id")
        request_id = incoming if well_formed(incoming) else uuid.uuid4().hex
        record = AccessRecord(request_id, scope.get("method", ""), scope.get("path", ""))
        scope.setdefault("state", {})[_STATE_KEY] = record
        add_header = self.echo_incoming_id or request_id != incoming

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                record.status = message["status"]
                if add_header:
                    MutableHeaders(scope=message)[HEADER] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except asyncio.CancelledError:  # Ray cancels the handler when the client disconnects
            record.disconnected = True
            raise
        except Exception:  # not mapped by a route: Starlette's outermost middleware answers 500
            record.status = record.status or 500
            raise
        finally:
            route = scope.get("route")
            record.route = getattr(route, "path", "unmatched")
            record.key_id = scope["state"].get(KEY_ID_STATE)
            self._done(record)

    def _done(self, record: AccessRecord) -> None:
        """Log and count; never raises (a logging or metrics failure must not turn an answer into an error)."""
        try:
            record.finish(time.monotonic())
            access_logger.info(record.line())
            metrics = self.metrics()
            if metrics is not None:
                metrics.request_done(record)
        except Exception:
            logging.getLogger("musicgen_onnx").exception("access log / metrics failed for request %s", record.id)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def configure(stream=None) -> None:
    """Write the access log as bare JSON lines to ``stream`` (default stderr: Ray keeps a replica's stderr in
    its worker log and a container runtime collects it). Idempotent: one handler however often it is called."""
    if any(isinstance(h, _JsonLines) for h in access_logger.handlers):
        return
    handler = _JsonLines(stream or sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    access_logger.addHandler(handler)
    access_logger.setLevel(logging.INFO)


class _JsonLines(logging.StreamHandler):
    """The access log's own handler (its type tells ``configure`` it is already there)."""
