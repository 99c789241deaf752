"""The Ray Serve app on a real local Ray cluster (one per test session, 127.0.0.1 only).

Every request has a client timeout and every polling loop a bound in count and time, so nothing here can hang.
The served audio is compared with what the library makes for the same seed, so the HTTP layer cannot drift.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
import soundfile as sf
import yaml
from musicgen_onnx.runtime import MusicGen
from musicgen_onnx.runtime.audio import resample
from musicgen_onnx.runtime.plan import DEFAULT_DURATION_CAP
from musicgen_onnx.serving import ServeConfig
from musicgen_onnx.serving.cli import main as serve_cli
from musicgen_onnx.serving.deployment import build_app
from musicgen_onnx.serving.formats import to_pcm16
from ray import serve
from ray.serve.schema import ServeDeploySchema
from serving_fixtures import poll, run_app

SR = 32000
TIMEOUT = 120  # seconds, for any one HTTP call
LONG_CLIP_S = DEFAULT_DURATION_CAP  # the longest clip the runtime accepts (600 s): no machine makes it in 3 s


@pytest.fixture(scope="session")
def faults_app(cluster, exported_mono) -> str:
    """The tiny mono export with fault drills on, a fast watchdog and a 3 s request timeout, on its own route
    (clips up to the runtime's cap: enough steps that no machine makes one within the timeout)."""
    args = dict(
        model_dir=str(exported_mono),
        threads=1,
        fault_injection=True,
        stall_after_s=2.0,
        request_timeout_s=3.0,
        max_duration=LONG_CLIP_S,
    )
    return run_app({**args, "health_check_period_s": 1.0, "health_check_timeout_s": 5.0}, "faults", "/faults", cluster)


@pytest.fixture(scope="module")
def local_stereo(exported_stereo) -> MusicGen:
    return MusicGen.load(exported_stereo, provider="cpu", threads=1)


def post(base: str, body: dict, **kwargs) -> requests.Response:
    return requests.post(f"{base}/v1/audio/generations", json=body, timeout=TIMEOUT, **kwargs)


def _expected_pcm(model: MusicGen, text: str | None, duration: float, seed: int, chunk_seconds: float) -> bytes:
    chunks = model.stream(text, duration=duration, seed=seed, chunk_seconds=chunk_seconds)
    return b"".join(to_pcm16(c.audio[0]) for c in chunks)


# ---- the API ---------------------------------------------------------------------------------------------
def test_wav_has_the_exact_length_and_the_library_audio(stereo_app, local_stereo):
    r = post(stereo_app, {"input": "lo-fi beat", "duration": 1.5, "seed": 7})
    assert r.status_code == 200 and r.headers["content-type"] == "audio/wav"
    assert (r.headers["X-Audio-Samples"], r.headers["X-Audio-Sample-Rate"], r.headers["X-Audio-Channels"]) == (
        "48000",
        "32000",
        "2",
    )
    audio, sr = sf.read(io.BytesIO(r.content), dtype="int16")
    assert sr == SR and audio.shape == (48000, 2)
    assert r.content[44:] == _expected_pcm(local_stereo, "lo-fi beat", 1.5, 7, 0.5)


def test_streamed_bytes_equal_the_whole_file(stereo_app):
    body = {"input": "calm piano", "duration": 2.0, "seed": 3}
    whole = post(stereo_app, body).content
    with post(stereo_app, {**body, "stream": True}, stream=True) as r:
        assert r.status_code == 200 and r.headers["X-Seed"] == "3"
        pieces = [p for p in r.iter_content(chunk_size=None) if p]
    streamed = b"".join(pieces)
    assert len(pieces) > 2  # the header, then audio as it is made
    assert streamed[:4] == whole[:4] and streamed[8:40] == whole[8:40]  # same format; sizes open in the stream
    assert struct.unpack("<I", streamed[40:44])[0] == 0xFFFFFFFF
    assert streamed[44:] == whole[44:]
    audio, sr = sf.read(io.BytesIO(streamed), dtype="int16")  # players read an open-size WAV to its end
    assert audio.shape == (64000, 2) and sr == SR
    pcm = post(stereo_app, {**body, "response_format": "pcm", "stream": True}).content
    assert pcm == whole[44:]
    flac = post(stereo_app, {**body, "response_format": "flac"})
    assert flac.headers["content-type"] == "audio/flac"
    np.testing.assert_array_equal(sf.read(io.BytesIO(flac.content), dtype="int16")[0], audio)


@pytest.mark.parametrize(
    ("fmt", "media", "rate", "frame"), [("mp3", "audio/mpeg", SR, 1152), ("opus", "audio/ogg", 48000, 960)]
)
def test_mp3_and_opus_decode_to_the_requested_length(stereo_app, fmt, media, rate, frame):
    """Compressed files: the requested length within one codec frame (MP3: 1152 samples; Opus: 20 ms at its
    48 kHz, to which the 32 kHz clip is resampled), at the rate the headers announce, and the same sound."""
    body = {"input": "compressed", "duration": 1.5, "seed": 11}
    r = post(stereo_app, {**body, "response_format": fmt})
    assert r.status_code == 200 and r.headers["content-type"].startswith(media)
    assert (r.headers["X-Audio-Sample-Rate"], r.headers["X-Audio-Samples"]) == (str(rate), str(round(1.5 * rate)))
    audio, sr = sf.read(io.BytesIO(r.content), dtype="float32")
    assert sr == rate and audio.shape[1] == 2
    assert abs(audio.shape[0] - 1.5 * rate) <= frame, audio.shape
    # the same sound as the WAV: correlated sample by sample, compared without their means (the tiny model's
    # output rides on a large DC offset, which Opus's encoder filters out by design)
    reference, _ = sf.read(io.BytesIO(post(stereo_app, body).content), dtype="float32")
    reference = resample(reference.T, SR, rate).T
    n = min(len(audio), len(reference))
    middle = slice(n // 10, n - n // 10)
    for channel in range(2):
        a, b = audio[middle, channel], reference[middle, channel]
        assert np.corrcoef(a - a.mean(), b - b.mean())[0, 1] > 0.9
    assert len(r.content) < len(post(stereo_app, {**body, "response_format": "flac"}).content)


def test_unconditional_generation_and_a_drawn_seed(stereo_app):
    r = post(stereo_app, {"input": None, "duration": 0.5})
    assert r.status_code == 200 and int(r.headers["X-Seed"]) >= 0
    again = post(stereo_app, {"input": None, "duration": 0.5, "seed": int(r.headers["X-Seed"])})
    assert again.content == r.content  # the seed the server drew reproduces the clip


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"input": "x", "duration": 0}, r"duration must be in (0, 120] seconds"),
        ({"input": "x", "duration": 121}, r"duration must be in (0, 120] seconds"),
        ({"input": "x", "top_k": 5000}, "top_k must be an integer in 0..2048"),
        ({"input": "x", "top_p": 0}, "top_p"),
        ({"input": "x", "temperature": -1}, "temperature"),
        ({"input": "x", "guidance_scale": "high"}, "guidance_scale must be a finite number"),
        ({"input": "x", "seed": -3}, "seed must be a non-negative integer"),
        ({"input": 5}, "input must be a text prompt"),
        ({"input": "x", "response_format": "mp4"}, "response_format must be one of wav, flac, pcm, mp3, opus"),
        ({"input": "x", "response_format": "flac", "stream": True}, "cannot be streamed"),
        ({"input": "x", "response_format": "mp3", "stream": True}, "with stream=true use one of wav, pcm"),
        ({"input": "x", "response_format": "opus", "stream": True}, "with stream=true use one of wav, pcm"),
        ({"prompt": "x"}, "unknown fields ['prompt']"),
        ([1, 2], "the body must be a JSON object"),
    ],
)
def test_bad_requests_are_422_with_the_reason(stereo_app, body, message):
    r = post(stereo_app, body)
    assert r.status_code == 422
    error = r.json()["error"]
    assert message in error["message"] and error["type"] == "invalid_request_error"
    assert "Traceback" not in r.text


def test_malformed_and_oversized_bodies(stereo_app):
    r = requests.post(f"{stereo_app}/v1/audio/generations", data=b"{not json", timeout=TIMEOUT)
    assert r.status_code == 422 and "not valid JSON" in r.json()["error"]["message"]
    r = post(stereo_app, {"input": "x" * 70_000})
    assert r.status_code == 413 and "at most 65536" in r.json()["error"]["message"]


def test_models_and_health(stereo_app):
    model = requests.get(f"{stereo_app}/v1/models", timeout=TIMEOUT).json()["data"][0]
    assert (model["channels"], model["sampling_rate"], model["device"], model["max_batch"]) == (2, SR, "cpu", 2)
    health = requests.get(f"{stereo_app}/healthz", timeout=TIMEOUT).json()
    assert health["status"] == "ok" and health["engine"]["steps"] > 0  # the warm-up ran


def test_audio_prompt_upload(stereo_app, local_stereo):
    t = np.arange(SR // 2) / SR
    tone = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    wav = io.BytesIO()
    sf.write(wav, np.stack([tone, tone], axis=1), SR, format="WAV", subtype="FLOAT")
    form = {"input": "continue this", "duration": "1.5", "seed": "4"}
    files = {"audio_prompt": ("tone.wav", wav.getvalue(), "audio/wav")}
    r = requests.post(f"{stereo_app}/v1/audio/generations", data=form, files=files, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    expected = local_stereo.stream(
        "continue this", duration=1.5, seed=4, chunk_seconds=0.5, prompt_audio=np.stack([tone, tone])
    )
    assert r.content[44:] == b"".join(to_pcm16(c.audio[0]) for c in expected)
    big = {"audio_prompt": ("big.wav", b"\0" * 300_000, "audio/wav")}
    r = requests.post(f"{stereo_app}/v1/audio/generations", data=form, files=big, timeout=TIMEOUT)
    assert r.status_code == 413
    bad = {"audio_prompt": ("x.wav", b"not audio at all", "audio/wav")}
    r = requests.post(f"{stereo_app}/v1/audio/generations", data=form, files=bad, timeout=TIMEOUT)
    assert r.status_code == 422 and "audio_prompt is not an audio file" in r.json()["error"]["message"]


# ---- under load and faults ---------------------------------------------------------------------------------
def test_sixteen_clients_against_a_small_capacity_get_200_or_429(stereo_app):
    barrier = threading.Barrier(16)

    def client(i: int) -> requests.Response:
        barrier.wait(timeout=30)
        return post(stereo_app, {"input": f"client {i}", "duration": 3.0, "seed": i})

    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(client, range(16), timeout=600))
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) == {200, 429}, statuses  # 2 slots + 2 waiting: the rest are turned away at once
    for r in responses:
        if r.status_code == 429:
            assert r.headers["Retry-After"] == "2" and "at capacity" in r.json()["error"]["message"]
        else:
            assert sf.read(io.BytesIO(r.content))[0].shape == (3 * SR, 2)


def _engine(base: str) -> dict:
    return requests.get(f"{base}/healthz", timeout=TIMEOUT).json()["engine"]


def test_a_client_that_disconnects_cancels_its_row(stereo_app):
    before = _engine(stereo_app)["steps"]
    with post(stereo_app, {"input": "long", "duration": 60.0, "stream": True}, stream=True) as r:
        assert r.status_code == 200
        next(r.iter_content(chunk_size=4096))  # generation has started
    poll(lambda: _engine(stereo_app)["active"] == 0, 60, "the abandoned request to leave the engine")
    steps = _engine(stereo_app)["steps"] - before
    assert steps < 1000, steps  # 60 s is 3000 frames (6 windows); it stopped soon after the disconnect


def test_a_request_past_its_timeout_is_408_and_its_row_freed(faults_app):
    # 600 s, 30000 steps: far more than 3 s on any machine (120 s, 6000 steps of the tiny model, once fit in 3 s)
    r = post(faults_app, {"input": "too long", "duration": LONG_CLIP_S})
    assert r.status_code == 408 and "request_timeout_s=3 s" in r.json()["error"]["message"]
    with post(faults_app, {"input": "too long", "duration": LONG_CLIP_S, "stream": True}, stream=True) as r:
        streamed = b"".join(r.iter_content(chunk_size=None))
    assert r.status_code == 200 and 44 < len(streamed) < 44 + 2 * LONG_CLIP_S * SR  # the stream ends early
    poll(lambda: _engine(faults_app)["active"] == 0, 30, "the timed-out requests to leave the engine")


def test_a_killed_replica_is_replaced(faults_app):
    pid = requests.get(f"{faults_app}/healthz", timeout=TIMEOUT).json()["pid"]
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)

    def new_replica():
        r = requests.get(f"{faults_app}/healthz", timeout=10)
        return r.status_code == 200 and r.json()["pid"] != pid

    poll(new_replica, 120, "a new replica")
    r = post(faults_app, {"input": "after the crash", "duration": 0.5, "seed": 1})
    print(f"killed replica serving again after {time.monotonic() - killed:.1f} s")
    assert r.status_code == 200 and sf.read(io.BytesIO(r.content))[0].shape == (SR // 2,)


def test_a_stalled_loop_is_replaced(faults_app):
    pid = requests.get(f"{faults_app}/healthz", timeout=TIMEOUT).json()["pid"]
    r = requests.post(f"{faults_app}/debug/stall", params={"seconds": -1}, timeout=TIMEOUT)
    assert r.status_code == 422 and "seconds must be a number in [0, 3600]" in r.json()["error"]["message"]
    r = requests.post(f"{faults_app}/debug/stall", params={"seconds": 600}, timeout=TIMEOUT)
    assert r.status_code == 200
    stuck = threading.Thread(target=lambda: _swallow(post, faults_app, {"input": "waits", "duration": 1.0}))
    stuck.start()  # work waiting on a loop that makes no step
    started = time.monotonic()

    def replaced():
        r = requests.get(f"{faults_app}/healthz", timeout=10)
        return r.status_code == 200 and r.json()["pid"] != pid

    poll(replaced, 120, "the stalled replica to be replaced")
    print(f"stalled replica replaced after {time.monotonic() - started:.1f} s")
    stuck.join(timeout=TIMEOUT)
    assert post(faults_app, {"input": "fine again", "duration": 0.5}).status_code == 200


def _swallow(fn, *args):
    with contextlib.suppress(requests.RequestException):  # its replica was replaced: the client may see a reset
        fn(*args)


def test_stall_drill_is_off_by_default(stereo_app):
    r = requests.post(f"{stereo_app}/debug/stall", params={"seconds": 5}, timeout=TIMEOUT)
    assert r.status_code == 404


def test_shutdown_lets_requests_in_flight_finish(cluster, exported_mono):
    base = run_app({"model_dir": str(exported_mono), "threads": 1, "warmup_seconds": 0}, "drain", "/drain", cluster)
    started, result = threading.Event(), {}

    def long_request():
        with post(base, {"input": "finish me", "duration": 40.0, "seed": 2, "stream": True}, stream=True) as r:
            pieces = []
            for piece in r.iter_content(chunk_size=None):
                pieces.append(piece)
                started.set()
            result["status"], result["body"] = r.status_code, b"".join(pieces)

    client = threading.Thread(target=long_request)
    client.start()
    assert started.wait(timeout=TIMEOUT)
    serve.delete("drain")  # drains: waits for the request in flight, then stops the replica
    client.join(timeout=TIMEOUT)
    assert result["status"] == 200 and sf.read(io.BytesIO(result["body"]))[0].shape == (40 * SR,)
    assert requests.get(f"{base}/healthz", timeout=TIMEOUT).status_code == 404  # the app is gone


def test_yaml_round_trip(cluster, exported_mono, tmp_path):
    path = tmp_path / "serve.yaml"
    args = [str(exported_mono), "--write-config", str(path), "--threads", "1", "--max-batch", "3"]
    assert serve_cli(args) == 0
    document = yaml.safe_load(path.read_text())
    app = ServeDeploySchema.model_validate(document).applications[0]
    assert app.import_path == "musicgen_onnx.serving.deployment:build_app" and app.args["max_batch"] == 3
    args = json.loads(json.dumps(app.args))  # what a cluster receives: plain values
    base = run_app({**args, "warmup_seconds": 0}, "from-yaml", "/yaml", cluster)
    model = requests.get(f"{base}/v1/models", timeout=TIMEOUT).json()["data"][0]
    assert model["max_batch"] == 3
    serve.delete("from-yaml")


def test_config_errors_name_the_valid_values(exported_mono):
    with pytest.raises(ValueError, match="unknown serve settings"):
        build_app({"model_dir": str(exported_mono), "max_batchh": 2})
    with pytest.raises(ValueError, match="replicas must be an integer >= 1 or 'auto'"):
        build_app({"model_dir": str(exported_mono), "replicas": 0})
    with pytest.raises(ValueError, match="provider must be one of auto, cuda, cpu"):
        ServeConfig(model_dir="x", provider="tpu")
    assert build_app({"model_dir": str(exported_mono), "max_batch": "3", "replicas": "auto"}) is not None


def test_serve_without_the_serve_extra_says_how_to_install_it():
    code = (
        "import sys; sys.modules['ray'] = None; from musicgen_onnx.runtime.cli import main; "
        "raise SystemExit(main(['serve', 'out/x']))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "musicgen-onnx serve needs ray[serve] and fastapi (ray is missing)" in out.stderr
    assert 'pip install "musicgen-onnx[serve]"' in out.stderr
