"""Metrics and access log without Ray: the metrics module alone, then the access-log middleware around the real
HTTP handler and a real ``MusicGenService`` on the tiny export, driven through ASGI calls (docs/design.md §20).

The served app on a real local Ray (``/metrics``, Ray's metrics endpoint, the replica's log) is tested in
tests/test_serving_metrics_ray.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys

import pytest
from fastapi import FastAPI, Request
from musicgen_onnx.serving import ServeConfig
from musicgen_onnx.serving.access_log import ACCESS_LOGGER, AccessLogMiddleware, AccessRecord, Outcome, well_formed
from musicgen_onnx.serving.http import generations, guarded
from musicgen_onnx.serving.metrics import EngineFigures, ServingMetrics
from musicgen_onnx.serving.service import MusicGenService
from prometheus_client.parser import text_string_to_metric_families

ROUTE = "/v1/audio/generations"
SR = 32000


def samples(metrics: ServingMetrics) -> dict[tuple[str, frozenset], float]:
    """The exposition parsed by prometheus_client's own parser: {(sample name, labels): value}."""
    text = metrics.exposition().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(parsed: dict, name: str, **labels: str) -> float:
    return parsed.get((name, frozenset(labels.items())), 0.0)


# ---- the metrics module ------------------------------------------------------------------------------------
def _record(status: int, *, stream: bool = False, generated: float | None = None, latency: float = 2.0, **kw):
    record = AccessRecord("id", "POST", ROUTE, route=ROUTE, status=status, stream=stream, **kw)
    record.seconds_generated, record.latency_s = generated, latency
    if generated:
        record.first_audio_s = 0.3
    return record


def test_metrics_count_requests_audio_and_latency():
    m = ServingMetrics()
    m.request_done(_record(200, generated=4.0, latency=2.0))
    m.request_done(_record(200, stream=True, generated=1.5, latency=3.0))
    m.request_done(_record(429, outcome=Outcome.REJECTED))
    m.request_done(_record(408, outcome=Outcome.TIMEOUT))
    m.request_done(_record(200, stream=True, generated=0.5, latency=9.0, outcome=Outcome.TIMEOUT))  # cut stream
    m.request_done(_record(422, outcome=Outcome.REJECTED))
    m.request_done(AccessRecord("h", "GET", "/healthz", route="/healthz", status=200))
    p = samples(m)
    assert value(p, "musicgen_requests_total", route=ROUTE, status="200") == 3
    assert value(p, "musicgen_requests_total", route=ROUTE, status="429") == 1
    assert value(p, "musicgen_requests_total", route=ROUTE, status="422") == 1
    assert value(p, "musicgen_requests_total", route="/healthz", status="200") == 1
    assert value(p, "musicgen_throttled_requests_total") == 1
    assert value(p, "musicgen_request_timeouts_total", stream="false") == 1
    assert value(p, "musicgen_request_timeouts_total", stream="true") == 1
    assert value(p, "musicgen_audio_seconds_total", stream="false") == 4.0
    assert value(p, "musicgen_audio_seconds_total", stream="true") == 2.0  # the cut stream's 0.5 s count too
    # latency and real-time factor: completed requests only (the cut stream is not one)
    assert value(p, "musicgen_request_latency_seconds_count", stream="true") == 1
    assert value(p, "musicgen_request_latency_seconds_sum", stream="true") == 3.0
    assert value(p, "musicgen_request_latency_seconds_bucket", stream="false", le="2.5") == 1
    assert value(p, "musicgen_request_latency_seconds_bucket", stream="false", le="1.0") == 0
    assert value(p, "musicgen_real_time_factor_sum", stream="false") == 0.5  # 2 s for 4 s of audio
    assert value(p, "musicgen_real_time_factor_sum", stream="true") == 2.0
    assert value(p, "musicgen_time_to_first_audio_seconds_count", stream="true") == 2


def test_engine_figures_become_gauges_and_a_step_counter():
    m = ServingMetrics()
    m.engine(EngineFigures(steps=100, active=2, queued=3, in_flight=5))
    m.engine(EngineFigures(steps=160, active=1, queued=0, in_flight=1), rate=30.0)
    p = samples(m)
    assert value(p, "musicgen_decoder_steps_total") == 60  # counted from the first reading on
    assert (value(p, "musicgen_active_rows"), value(p, "musicgen_queue_depth")) == (1, 0)
    assert value(p, "musicgen_requests_in_flight") == 1
    assert value(p, "musicgen_decoder_steps_per_second") == 30.0
    m.engine(EngineFigures(steps=None, active=1, queued=2, in_flight=3))  # no batching engine: no step counter
    assert value(samples(m), "musicgen_queue_depth") == 2


def test_request_ids():
    assert well_formed("2f1c7e8e-8d0c-4d8a-9a3b-6c1d2e3f4a5b") and well_formed("trace:abc/1")
    for bad in (None, "", "has space", "x" * 129, '"quoted"', "line\nbreak", "-leading-dash"):
        assert not well_formed(bad), bad


def test_the_runtime_imports_neither_serving_nor_prometheus():
    code = (
        "import sys, musicgen_onnx.runtime; print(sorted(m for m in ('prometheus_client', 'ray') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]"


# ---- the access-log middleware around the real handler (ASGI, no Ray) -----------------------------------------
@pytest.fixture(scope="module")
def served(exported_stereo):
    """The real handler of POST /v1/audio/generations behind the middleware, on a service with one slot and no
    queue (so a second request while one streams is a cheap 429), and the metrics it feeds."""
    config = ServeConfig(
        model_dir=str(exported_stereo), threads=1, max_batch=1, max_queued=0, chunk_seconds=0.5, warmup_seconds=0
    )
    service = MusicGenService(config)
    metrics = ServingMetrics()
    app = FastAPI()
    app.add_middleware(AccessLogMiddleware, metrics=lambda: metrics)

    @app.post(ROUTE)
    async def create(request: Request):
        request.state.key_id = request.headers.get("x-test-key-id")  # what the API-key layer leaves
        return await guarded(lambda: generations(request, service))

    yield app, metrics
    service.close(grace_s=1.0)


class Call:
    """One HTTP request through the ASGI app: what was sent back, and a way to hang up mid-stream."""

    def __init__(self, body: dict, headers: dict[str, str] | None = None, hang_up_after: int | None = None):
        self.body = json.dumps(body).encode()
        self.headers = [(b"content-type", b"application/json")]
        self.headers += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
        self.hang_up_after, self.messages, self.given = hang_up_after, [], False
        self.gone = asyncio.Event()
        self.first_audio = asyncio.Event()

    async def receive(self):
        if not self.given:
            self.given = True
            return {"type": "http.request", "body": self.body, "more_body": False}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message):
        self.messages.append(message)
        chunks = [m for m in self.messages if m["type"] == "http.response.body" and m.get("body")]
        if len(self.content) > 44:  # audio after the WAV header
            self.first_audio.set()
        if self.hang_up_after is not None and len(chunks) >= self.hang_up_after:
            self.gone.set()

    async def run(self, app) -> Call:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": ROUTE,
            "raw_path": ROUTE.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": self.headers,
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 80),
        }
        await asyncio.wait_for(app(scope, self.receive, self.send), 120)
        return self

    @property
    def status(self) -> int:
        return self.messages[0]["status"]

    def header(self, name: str) -> list[str]:
        return [v.decode() for k, v in self.messages[0]["headers"] if k.decode().lower() == name.lower()]

    @property
    def content(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.messages if m["type"] == "http.response.body")


def _lines(caplog) -> dict[str, dict]:
    out = {}
    for r in caplog.records:
        if r.name == ACCESS_LOGGER:
            line = json.loads(r.getMessage())
            out[line["id"]] = line
    return out


def test_one_json_line_per_request_with_its_id(served, caplog):
    app, metrics = served
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    before = samples(metrics)
    ok = asyncio.run(Call({"input": "a", "duration": 1.0, "seed": 1}, {"X-Request-Id": "client-id-1"}).run(app))
    bad = asyncio.run(Call({"input": "a", "duration": 0}, {"X-Request-Id": "not well formed!"}).run(app))
    keyed = asyncio.run(Call({"input": "a", "duration": 0.5, "stream": True}, {"X-Test-Key-Id": "k1"}).run(app))
    assert ok.status == 200 and len(ok.content) == 44 + SR * 2 * 2
    assert ok.header("X-Request-Id") == ["client-id-1"]  # a well-formed client id is kept
    assert bad.status == 422 and len(bad.header("X-Request-Id")) == 1
    generated = bad.header("X-Request-Id")[0]
    assert generated != "not well formed!" and well_formed(generated)  # replaced on error responses too
    lines = _lines(caplog)
    line = lines["client-id-1"]
    assert line["route"] == ROUTE and line["status"] == 200 and line["outcome"] == "ok"
    assert (line["stream"], line["format"], line["seconds_requested"], line["seconds_generated"]) == (
        False,
        "wav",
        1.0,
        1.0,
    )
    assert 0 < line["first_audio_s"] <= line["latency_s"] and line["key_id"] is None
    line = lines[generated]
    assert (line["status"], line["outcome"], line["seconds_requested"], line["seconds_generated"]) == (
        422,
        "rejected",
        0,
        None,
    )
    line = lines[keyed.header("X-Request-Id")[0]]
    assert (line["key_id"], line["stream"], line["seconds_generated"], line["outcome"]) == ("k1", True, 0.5, "ok")
    after = samples(metrics)
    assert (
        value(after, "musicgen_requests_total", route=ROUTE, status="200")
        - value(before, "musicgen_requests_total", route=ROUTE, status="200")
        == 2
    )
    assert value(after, "musicgen_audio_seconds_total", stream="true") - value(
        before, "musicgen_audio_seconds_total", stream="true"
    ) == pytest.approx(0.5)


def test_a_hung_up_stream_is_logged_when_it_ends_and_a_busy_server_429(served, caplog):
    """One slot, no queue: while a long stream holds the slot a second request is 429 (logged, counted); the
    stream's client then hangs up and the stream is logged as disconnected with the audio made so far."""
    app, metrics = served
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    before = samples(metrics)

    async def scenario():
        long = Call({"input": "long", "duration": 60.0, "stream": True}, {"X-Request-Id": "long-1"})
        task = asyncio.create_task(long.run(app))
        await asyncio.wait_for(long.first_audio.wait(), 60)  # the stream holds the only slot
        busy = await Call({"input": "busy", "duration": 1.0}, {"X-Request-Id": "busy-1"}).run(app)
        long.hang_up_after = 0
        long.gone.set()
        await task
        return busy

    busy = asyncio.run(scenario())
    assert busy.status == 429 and busy.header("X-Request-Id") == ["busy-1"] and busy.header("Retry-After") == ["2"]
    lines = _lines(caplog)
    assert (lines["busy-1"]["status"], lines["busy-1"]["outcome"]) == (429, "rejected")
    line = lines["long-1"]
    assert (line["status"], line["outcome"], line["stream"]) == (200, "disconnected", True)
    assert 0 < line["seconds_generated"] < 60 and line["seconds_requested"] == 60.0
    after = samples(metrics)
    assert value(after, "musicgen_throttled_requests_total") - value(before, "musicgen_throttled_requests_total") == 1
    assert value(after, "musicgen_request_latency_seconds_count", stream="true") == value(
        before, "musicgen_request_latency_seconds_count", stream="true"
    )  # a disconnected stream is not a completed request


def test_an_unmapped_failure_is_logged_as_500_and_the_log_handler_writes_bare_json_lines(caplog):
    import io

    from musicgen_onnx.serving import access_log

    app = FastAPI()
    app.add_middleware(AccessLogMiddleware)

    @app.post(ROUTE)
    async def broken(request: Request):
        raise RuntimeError("not mapped to a response by the route")

    buf = io.StringIO()
    access_log.configure(buf)
    access_log.configure(buf)  # idempotent: still one handler
    handlers = [h for h in logging.getLogger(ACCESS_LOGGER).handlers if isinstance(h, logging.StreamHandler)]
    try:
        caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
        with pytest.raises(RuntimeError):  # Starlette answers 500, then re-raises to the server
            asyncio.run(Call({"input": "x"}, {"X-Request-Id": "broken-1"}).run(app))
    finally:
        for h in handlers:
            logging.getLogger(ACCESS_LOGGER).removeHandler(h)
    assert len(handlers) == 1
    written = [json.loads(text) for text in buf.getvalue().splitlines()]
    assert [(w["id"], w["status"], w["outcome"]) for w in written] == [("broken-1", 500, "failed")]
    assert _lines(caplog)["broken-1"]["route"] == ROUTE
