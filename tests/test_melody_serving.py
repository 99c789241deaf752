"""A melody checkpoint served: the ``melody`` multipart upload (any sample rate, resampled by the runtime), its
errors, and concurrent melody requests sharing the replica's batching engine. The served audio is compared byte
for byte with what the library makes for the same melody and seed. Real local Ray on 127.0.0.1 (the session's
``cluster``), tiny stereo melody export."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
import soundfile as sf
from melody_helpers import tune
from musicgen_onnx.runtime import MusicGen
from musicgen_onnx.serving.formats import to_pcm16

TIMEOUT = 120  # seconds, for any one HTTP call
RATE = 44100  # the uploads' rate: not the model's 32 kHz


@pytest.fixture(scope="module")
def local(exported_melody_stereo) -> MusicGen:
    with MusicGen.load(exported_melody_stereo, provider="cpu", threads=1) as model:
        yield model


def _wav(audio: np.ndarray) -> bytes:
    """[channels, samples] float32 -> a float WAV at RATE (read back exactly)."""
    out = io.BytesIO()
    sf.write(out, audio.T, RATE, format="WAV", subtype="FLOAT")
    return out.getvalue()


def _post(base: str, form: dict, melody: bytes | None = None) -> requests.Response:
    files = None if melody is None else {"melody": ("melody.wav", melody, "audio/wav")}
    return requests.post(f"{base}/v1/audio/generations", data=form, files=files, timeout=TIMEOUT)


def _expected(local: MusicGen, text: str, duration: float, seed: int, melody: np.ndarray) -> bytes:
    mono = melody.mean(axis=0, dtype=np.float32)  # the service mixes any channel count to mono
    chunks = local.stream(text, duration=duration, seed=seed, chunk_seconds=0.5, melody=mono, melody_sample_rate=RATE)
    return b"".join(to_pcm16(c.audio[0]) for c in chunks)


def test_melody_upload_at_any_rate_equals_the_library(melody_app, local):
    melody = tune(2.0, sr=RATE, channels=2)
    r = _post(melody_app, {"input": "a rock song", "duration": "1.5", "seed": "4"}, _wav(melody))
    assert r.status_code == 200, r.text
    assert r.headers["X-Audio-Samples"] == "48000"
    assert r.content[44:] == _expected(local, "a rock song", 1.5, 4, melody)
    body = {"input": "a rock song", "duration": 1.5, "seed": 4}
    without = requests.post(f"{melody_app}/v1/audio/generations", json=body, timeout=TIMEOUT)
    assert without.status_code == 200 and without.content != r.content  # the melody changed the clip


def test_concurrent_melody_requests_equal_their_solo_runs(melody_app, local):
    """Four clients, different melodies, texts and durations, against 2 slots + 4 waiting: all in the engine."""
    specs = [
        ("a rock song", 1.0, 1, tune(1.5, sr=RATE, channels=1)),
        ("calm piano with soft strings", 1.5, 2, tune(2.5, sr=RATE, notes=(220.0, 277.18), channels=2)),
        ("lo-fi", 0.5, 3, tune(0.8, sr=RATE, notes=(392.0, 493.88), channels=1)),
        ("jazz", 1.2, 4, tune(3.0, sr=RATE, channels=2)),
    ]

    def one(spec):
        text, duration, seed, melody = spec
        return _post(melody_app, {"input": text, "duration": str(duration), "seed": str(seed)}, _wav(melody))

    with ThreadPoolExecutor(len(specs)) as pool:
        answers = list(pool.map(one, specs))
    for r, (text, duration, seed, melody) in zip(answers, specs, strict=True):
        assert r.status_code == 200, r.text
        assert r.content[44:] == _expected(local, text, duration, seed, melody)


def test_streamed_melody_clip_equals_the_whole_file(melody_app):
    form = {"input": "a rock song", "duration": "1.0", "seed": "9", "response_format": "pcm"}
    melody = _wav(tune(1.0, sr=RATE, channels=1))
    whole = _post(melody_app, form, melody)
    streamed = _post(melody_app, {**form, "stream": "true"}, melody)
    assert whole.status_code == streamed.status_code == 200
    assert streamed.content == whole.content and len(whole.content) == 32000 * 2 * 2


def test_undecodable_melody_is_422(melody_app):
    r = _post(melody_app, {"input": "x", "duration": "0.5"}, b"not audio at all")
    assert r.status_code == 422 and "melody is not an audio file" in r.json()["error"]["message"]
    inline = {"melody": (None, "inline")}  # a multipart field without a filename: a string, not a file
    r = requests.post(f"{melody_app}/v1/audio/generations", files=inline, timeout=TIMEOUT)
    assert r.status_code == 422 and "melody must be an uploaded audio file" in r.json()["error"]["message"]


def test_melody_as_a_json_field_says_to_upload_it(melody_app):
    r = requests.post(f"{melody_app}/v1/audio/generations", json={"input": "x", "melody": [0.1]}, timeout=TIMEOUT)
    assert r.status_code == 422
    assert "melody must be uploaded as a file in a multipart/form-data body" in r.json()["error"]["message"]


def test_a_melody_sent_to_a_text_model_is_422(stereo_app, melody_app):
    r = _post(stereo_app, {"input": "x", "duration": "0.5"}, _wav(tune(0.5, sr=RATE, channels=1)))
    assert r.status_code == 422
    message = r.json()["error"]["message"]
    assert "takes no melody" in message and "musicgen-melody" in message
    text_model = requests.get(f"{stereo_app}/v1/models", timeout=TIMEOUT).json()["data"][0]
    melody_model = requests.get(f"{melody_app}/v1/models", timeout=TIMEOUT).json()["data"][0]
    assert (text_model["melody"], melody_model["melody"]) == (False, True)
    assert melody_model["max_batch"] == 2  # the melody replica batches
