"""Metrics and access log of the served app on the session's real local Ray (127.0.0.1; docs/design.md §20).

Real requests against ``stereo_app`` (2 slots, 2 waiting), then ``GET /metrics`` parsed by prometheus_client's
parser: the counters moved by exactly the requests made, by route and status; Ray's own metrics endpoint shows
the same counts; the replica's stderr (kept by Ray in its worker log) has one JSON line per request. Every
request has a client timeout and every loop a bound in count and time.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import ray
import requests
from prometheus_client.parser import text_string_to_metric_families
from serving_fixtures import poll

ROUTE = "/v1/audio/generations"
TIMEOUT = 120


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    r = requests.get(url, timeout=TIMEOUT)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def value(parsed: dict, name: str, **labels: str) -> float:
    return parsed.get((name, frozenset(labels.items())), 0.0)


def post(base: str, body: dict, **kwargs) -> requests.Response:
    return requests.post(f"{base}{ROUTE}", json=body, timeout=TIMEOUT, **kwargs)


def burst(base: str, clients: int, duration: float) -> list[int]:
    """``clients`` requests at once against 2 slots + 2 waiting: the rest are 429 at once."""
    barrier = threading.Barrier(clients)

    def client(i: int) -> int:
        barrier.wait(timeout=30)
        return post(base, {"input": f"burst {i}", "duration": duration, "seed": i}).status_code

    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(client, range(clients), timeout=300))


def test_metrics_count_exactly_the_requests_made(stereo_app):
    before = scrape(f"{stereo_app}/metrics")
    whole = post(stereo_app, {"input": "a", "duration": 1.0, "seed": 1})
    streamed = post(stereo_app, {"input": "b", "duration": 1.5, "seed": 2, "stream": True})
    invalid = post(stereo_app, {"input": "c", "duration": 0})
    assert (whole.status_code, streamed.status_code, invalid.status_code) == (200, 200, 422)
    assert requests.get(f"{stereo_app}/v1/models", timeout=TIMEOUT).status_code == 200
    statuses = burst(stereo_app, 10, 2.0)
    assert set(statuses) == {200, 429}, statuses
    after = scrape(f"{stereo_app}/metrics")

    def moved(name: str, **labels: str) -> float:
        return value(after, f"musicgen_{name}", **labels) - value(before, f"musicgen_{name}", **labels)

    ok, busy = statuses.count(200), statuses.count(429)
    assert moved("requests_total", route=ROUTE, status="200") == 2 + ok
    assert moved("requests_total", route=ROUTE, status="422") == 1
    assert moved("requests_total", route=ROUTE, status="429") == busy
    assert moved("requests_total", route="/v1/models", status="200") == 1
    assert moved("requests_total", route="/metrics", status="200") == 1  # the first scrape, counted once sent
    assert moved("throttled_requests_total") == busy
    assert moved("audio_seconds_total", stream="false") == 1.0 + 2.0 * ok
    assert moved("audio_seconds_total", stream="true") == 1.5
    for histogram in ("request_latency_seconds", "time_to_first_audio_seconds", "real_time_factor"):
        assert moved(f"{histogram}_count", stream="false") == 1 + ok, histogram
        assert moved(f"{histogram}_count", stream="true") == 1, histogram
        assert moved(f"{histogram}_sum", stream="false") > 0, histogram
    assert moved("request_latency_seconds_bucket", stream="false", le="+Inf") == 1 + ok
    assert moved("decoder_steps_total") > 0  # the engine ran (50 steps per second of audio at least)
    assert value(after, "musicgen_queue_depth") == 0 and value(after, "musicgen_active_rows") == 0


def test_rays_metrics_endpoint_has_the_same_counts(stereo_app):
    """The same metric objects feed Ray's metrics agent: its endpoint (``ray_`` prefix, the replica's Serve tags)
    reaches the app's own counts once Ray has reported (every few seconds)."""
    assert post(stereo_app, {"input": "ray", "duration": 0.5, "seed": 5}).status_code == 200
    port = ray.nodes()[0]["MetricsExportPort"]
    own = value(scrape(f"{stereo_app}/metrics"), "musicgen_requests_total", route=ROUTE, status="200")

    def ray_count():
        parsed = scrape(f"http://127.0.0.1:{port}/metrics")
        counts = [
            v
            for (name, labels), v in parsed.items()
            if name == "ray_musicgen_requests_total"
            and dict(labels).get("application") == "stereo"
            and dict(labels).get("route") == ROUTE
            and dict(labels).get("status") == "200"
        ]
        return counts and counts[0] == own and parsed

    parsed = poll(ray_count, 90, "Ray's metrics endpoint to report the app's count", every=2.0)
    names = {name for name, _ in parsed}
    for name in ("ray_musicgen_audio_seconds_total", "ray_musicgen_request_latency_seconds_bucket"):
        assert name in names, name
    assert "ray_musicgen_queue_depth" in names and "ray_musicgen_decoder_steps_total" in names


def _replica_lines(request_ids: set[str]) -> dict[str, dict]:
    """The access-log lines of ``request_ids`` in the replicas' stderr files (Ray's worker logs)."""
    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    found = {}
    for path in logs.glob("worker-*.err"):
        for text in path.read_text(errors="replace").splitlines():
            if text.startswith("{") and '"route"' in text:
                line = json.loads(text)
                if line.get("id") in request_ids:
                    found[line["id"]] = line
    return found


def test_request_ids_and_one_access_log_line_per_request(stereo_app):
    mine = {"X-Request-Id": f"client-{time.time_ns()}"}
    ok = post(stereo_app, {"input": "logged", "duration": 0.5, "seed": 3}, headers=mine)
    assert ok.status_code == 200 and ok.headers["X-Request-Id"] == mine["X-Request-Id"]  # kept, sent back once
    invalid = post(stereo_app, {"input": "logged", "duration": -1})
    generated = invalid.headers["X-Request-Id"]  # on errors too; Ray's proxy made it (a UUID)
    assert invalid.status_code == 422 and len(generated) == 36 and "," not in generated
    too_long = post(stereo_app, {"input": "logged", "duration": 0.5}, headers={"X-Request-Id": "x" * 200})
    replaced = too_long.headers["X-Request-Id"].split(", ")[0]  # then the proxy's copy of the client's
    assert too_long.status_code == 200 and len(replaced) == 32 and "x" * 200 in too_long.headers["X-Request-Id"]
    with post(stereo_app, {"input": "hang up", "duration": 60.0, "stream": True}, stream=True) as r:
        assert r.status_code == 200
        hung_up = r.headers["X-Request-Id"]
        next(r.iter_content(chunk_size=4096))
    wanted = {mine["X-Request-Id"], generated, replaced, hung_up}
    lines = poll(lambda: (found := _replica_lines(wanted)).keys() == wanted and found, 60, "the access-log lines")
    line = lines[mine["X-Request-Id"]]
    assert (line["route"], line["status"], line["outcome"], line["key_id"]) == (ROUTE, 200, "ok", None)
    assert (line["seconds_requested"], line["seconds_generated"], line["format"], line["stream"]) == (
        0.5,
        0.5,
        "wav",
        False,
    )
    assert 0 < line["first_audio_s"] <= line["latency_s"]
    assert (lines[generated]["status"], lines[generated]["outcome"]) == (422, "rejected")
    assert lines[replaced]["status"] == 200
    line = lines[hung_up]  # logged when the stream ended: the client went away
    assert (line["status"], line["outcome"], line["stream"]) == (200, "disconnected", True)
    assert line["seconds_generated"] < 60
    poll(
        lambda: requests.get(f"{stereo_app}/healthz", timeout=10).json()["engine"]["active"] == 0,
        60,
        "the abandoned stream to leave the engine",
    )
