"""``--replicas auto``: Ray Serve's autoscaling on ongoing requests (docs/design.md §22).

The options and the YAML are checked without starting anything; then, on the session's local Ray cluster
(127.0.0.1), a tiny export with one decoder slot per replica, half a CPU each and short delays is put under a
bounded load (4 clients, at most ``LOAD_LIMIT_S``): a second replica must start, and once the load stops the app
must go back to one. The replicas-over-time timeline is printed (benchmarks/README.md quotes one).
"""

from __future__ import annotations

import contextlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import yaml
from musicgen_onnx.serving.cli import main as serve_cli
from musicgen_onnx.serving.deployment import app_options, build_app
from ray import serve
from ray.serve.schema import ServeDeploySchema
from serving_fixtures import run_app

TIMEOUT = 60  # seconds, for any one HTTP call
LOAD_LIMIT_S = 150  # the load runs at most this long, whether or not a second replica came
SETTLE_LIMIT_S = 150  # after the load: the most we wait for the app to be back to one replica
CLIENTS = 4


def test_auto_maps_to_ray_serve_autoscaling_with_the_flags(exported_mono):
    args = {"model_dir": str(exported_mono), "max_batch": 3, "replicas": "auto"}
    _, options = app_options(args)
    assert "num_replicas" not in options
    assert options["autoscaling_config"] == {
        "min_replicas": 1,
        "max_replicas": 4,
        "target_ongoing_requests": 3,  # default: the replica's slots
        "upscale_delay_s": 10.0,
        "downscale_delay_s": 120.0,
        "look_back_period_s": 30.0,
    }
    flags = {"min_replicas": "2", "max_replicas": "5", "target_ongoing_requests": "1.5", "upscale_delay_s": "3"}
    _, options = app_options({**args, **flags, "num_cpus": "0.5"})  # strings, as `serve run key=value` gives
    scaling = options["autoscaling_config"]
    assert (scaling["min_replicas"], scaling["max_replicas"], scaling["target_ongoing_requests"]) == (2, 5, 1.5)
    assert scaling["upscale_delay_s"] == 3.0 and options["ray_actor_options"]["num_cpus"] == 0.5
    assert app_options({"model_dir": str(exported_mono), "replicas": 2})[1]["num_replicas"] == 2
    for bad, message in [
        ({"min_replicas": 5, "max_replicas": 4}, r"min_replicas must be an integer in \[0, max_replicas=4\], got 5"),
        ({"max_replicas": 0}, "max_replicas must be an integer >= 1, got 0"),
        ({"target_ongoing_requests": 0}, "target_ongoing_requests must be a number > 0, got 0"),
        ({"downscale_delay_s": -1}, "downscale_delay_s must be a number > 0, got -1"),
        ({"num_cpus": 0}, "num_cpus must be a number > 0, got 0"),
        ({"upscale_delay_s": "soon"}, "upscale_delay_s must be a number, got 'soon'"),
    ]:
        with pytest.raises(ValueError, match=message):
            build_app({**args, **bad})


def test_write_config_carries_the_autoscaling_config(exported_mono, tmp_path, capsys):
    path = tmp_path / "serve.yaml"
    flags = ["--replicas", "auto", "--min-replicas", "1", "--max-replicas", "3", "--target-ongoing-requests", "2"]
    flags += ["--upscale-delay", "5", "--downscale-delay", "60", "--replica-cpus", "1.5"]
    assert serve_cli([str(exported_mono), "--write-config", str(path), *flags]) == 0
    document = yaml.safe_load(path.read_text())
    app = ServeDeploySchema.model_validate(document).applications[0]
    deployment = app.deployments[0]
    assert deployment.name == "MusicGenServer"
    scaling = deployment.autoscaling_config
    assert (scaling["min_replicas"], scaling["max_replicas"], scaling["target_ongoing_requests"]) == (1, 3, 2.0)
    assert (scaling["upscale_delay_s"], scaling["downscale_delay_s"]) == (5.0, 60.0)
    assert app.args["replicas"] == "auto" and app.args["num_cpus"] == 1.5  # build_app rebuilds the same options
    _, options = app_options(app.args)
    assert options["autoscaling_config"] == scaling
    fixed = tmp_path / "fixed.yaml"
    assert serve_cli([str(exported_mono), "--write-config", str(fixed), "--replicas", "2"]) == 0
    assert yaml.safe_load(fixed.read_text())["applications"][0]["deployments"] == [
        {"name": "MusicGenServer", "num_replicas": 2}
    ]
    assert serve_cli([str(exported_mono), "--write-config", str(fixed), "--max-replicas", "3"]) == 2
    assert "--max-replicas only apply with --replicas auto" in capsys.readouterr().err


def _replicas(name: str) -> dict[str, int]:
    """Replica counts by state (RUNNING, STARTING, STOPPING, ...) of the app's deployment."""
    states = serve.status().applications[name].deployments["MusicGenServer"].replica_states
    return {str(getattr(state, "value", state)): count for state, count in states.items() if count}


def test_a_second_replica_starts_under_load_and_goes_again(cluster, exported_mono):
    scaling = dict(replicas="auto", min_replicas=1, max_replicas=2, target_ongoing_requests=1)
    scaling.update(upscale_delay_s=1.0, downscale_delay_s=5.0, look_back_period_s=11.0, num_cpus=0.5)
    engine = dict(threads=1, max_batch=1, max_queued=4, warmup_seconds=0, chunk_seconds=0.5, verify=False)
    base = run_app({"model_dir": str(exported_mono), **engine, **scaling}, "autoscale", "/autoscale", cluster)
    t0 = time.monotonic()
    timeline: list[tuple[float, str, int, str]] = []  # (seconds, phase, clients in flight, replica states)
    stop, in_flight, statuses, lock = threading.Event(), [0], [], threading.Lock()
    pids: set[int] = set()

    def client(i: int) -> None:
        deadline = t0 + LOAD_LIMIT_S
        n = 0
        while not stop.is_set() and time.monotonic() < deadline and n < 200:
            with lock:
                in_flight[0] += 1
            try:
                body = {"input": f"client {i}", "duration": 4.0, "seed": n}
                r = requests.post(f"{base}/v1/audio/generations", json=body, timeout=TIMEOUT)
                statuses.append(r.status_code)
            finally:
                with lock:
                    in_flight[0] -= 1
            n += 1

    def sample(phase: str) -> dict[str, int]:
        states = _replicas("autoscale")
        with contextlib.suppress(requests.RequestException, KeyError, ValueError):  # a replica coming or going
            pids.add(requests.get(f"{base}/healthz", timeout=10).json()["pid"])
        text = " ".join(f"{k}={v}" for k, v in sorted(states.items()))
        if not timeline or timeline[-1][1:] != (phase, in_flight[0], text):
            timeline.append((time.monotonic() - t0, phase, in_flight[0], text))
        return states

    try:
        with ThreadPoolExecutor(CLIENTS) as pool:
            for i in range(CLIENTS):
                pool.submit(client, i)
            scaled_up = None
            while time.monotonic() - t0 < LOAD_LIMIT_S:
                if sample("load").get("RUNNING", 0) >= 2:
                    scaled_up = scaled_up or time.monotonic() - t0
                    if time.monotonic() - t0 > scaled_up + 5:  # both replicas serve for a few seconds
                        break
                time.sleep(0.5)
            stop.set()
        load_ended = time.monotonic() - t0
        scaled_down = None
        while time.monotonic() - t0 < load_ended + SETTLE_LIMIT_S:
            states = sample("idle")
            if scaled_up and states == {"RUNNING": 1}:
                scaled_down = time.monotonic() - t0
                break
            time.sleep(0.5)
    finally:
        stop.set()
        print(f"\nautoscaling timeline (tiny mono export, {CLIENTS} clients of 4 s clips, 1 slot per replica):")
        for seconds, phase, clients, states in timeline:
            print(f"  t={seconds:6.1f} s  {phase:4}  clients in flight {clients}  replicas {states}")
        serve.delete("autoscale")
    ok = statuses.count(200)
    print(
        f"second replica running at {scaled_up} s, load stopped at {load_ended:.1f} s, back to one at "
        f"{scaled_down} s; {ok} of {len(statuses)} requests answered 200, {len(pids)} replica pids seen"
    )
    assert scaled_up is not None, "no second replica started under load"
    assert scaled_down is not None, "the app did not go back to one replica after the load"
    assert ok > 0 and set(statuses) <= {200, 429}, sorted(set(statuses))
    assert len(pids) >= 2  # /healthz was answered by two different replica processes
