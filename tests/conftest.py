"""Shared fixtures: tiny random-weight MusicGen checkpoints built by ``tests/tiny_checkpoint.py``."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))  # so tests can `from tiny_checkpoint import build_tiny_checkpoint`

from tiny_checkpoint import build_tiny_checkpoint  # noqa: E402


@pytest.fixture(scope="session")
def tiny_stereo_checkpoint(tmp_path_factory) -> Path:
    """A tiny stereo (2 channels, 8 codebooks) MusicgenForConditionalGeneration checkpoint directory."""
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny_stereo"), channels=2, seed=0)


@pytest.fixture(scope="session")
def tiny_mono_checkpoint(tmp_path_factory) -> Path:
    """A tiny mono (1 channel, 4 codebooks) MusicgenForConditionalGeneration checkpoint directory."""
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny_mono"), channels=1, seed=0)


@pytest.fixture(scope="session")
def exported_stereo(tiny_stereo_checkpoint, tmp_path_factory) -> Path:
    """The tiny stereo checkpoint exported with ``export_model`` (every graph, validated)."""
    from musicgen_onnx.export import export_model

    out = tmp_path_factory.mktemp("exports") / "stereo"
    export_model(str(tiny_stereo_checkpoint), out)
    return out


@pytest.fixture(scope="session")
def exported_mono(tiny_mono_checkpoint, tmp_path_factory) -> Path:
    """The tiny mono checkpoint exported with ``export_model``."""
    from musicgen_onnx.export import export_model

    out = tmp_path_factory.mktemp("exports") / "mono"
    export_model(str(tiny_mono_checkpoint), out)
    return out


@pytest.fixture(scope="session")
def exported_stereo_concat(tiny_stereo_checkpoint, tmp_path_factory) -> Path:
    """The tiny stereo checkpoint with the growing (concat) KV-cache decoder instead of the static one."""
    from musicgen_onnx.export import export_model

    out = tmp_path_factory.mktemp("exports") / "stereo_concat"
    export_model(str(tiny_stereo_checkpoint), out, kv_cache="concat", include_audio_encoder=False)
    return out


# ---- melody checkpoints (tests/tiny_melody_checkpoint.py) ----------------------------------------------------
@pytest.fixture(scope="session")
def tiny_melody_stereo_checkpoint(tmp_path_factory) -> Path:
    """A tiny stereo MusicgenMelodyForConditionalGeneration checkpoint (chroma_length 24)."""
    from tiny_melody_checkpoint import build_tiny_melody_checkpoint

    return build_tiny_melody_checkpoint(tmp_path_factory.mktemp("tiny_melody_stereo"), channels=2, seed=0)


@pytest.fixture(scope="session")
def tiny_melody_mono_checkpoint(tmp_path_factory) -> Path:
    """A tiny mono MusicgenMelodyForConditionalGeneration checkpoint (chroma_length 24)."""
    from tiny_melody_checkpoint import build_tiny_melody_checkpoint

    return build_tiny_melody_checkpoint(tmp_path_factory.mktemp("tiny_melody_mono"), channels=1, seed=1)


@pytest.fixture(scope="session")
def exported_melody_stereo(tiny_melody_stereo_checkpoint, tmp_path_factory) -> Path:
    from musicgen_onnx.export import export_model

    out = tmp_path_factory.mktemp("exports") / "melody_stereo"
    export_model(str(tiny_melody_stereo_checkpoint), out)
    return out


@pytest.fixture(scope="session")
def exported_melody_mono(tiny_melody_mono_checkpoint, tmp_path_factory) -> Path:
    from musicgen_onnx.export import export_model

    out = tmp_path_factory.mktemp("exports") / "melody_mono"
    export_model(str(tiny_melody_mono_checkpoint), out, include_audio_encoder=False)
    return out


# ---- the served app (tests/test_serving.py, tests/test_playground.py) -----------------------------------------
@pytest.fixture(scope="session")
def cluster():
    """A local Ray cluster with Serve's HTTP proxy on 127.0.0.1; the URL of the proxy."""
    import ray
    from ray import serve
    from serving_fixtures import free_port

    port = free_port()
    ray.init(num_cpus=6, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="session")
def stereo_app(cluster, exported_stereo) -> str:
    """The tiny stereo export at "/": 2 slots, 2 waiting, 0.5 s stream chunks."""
    from serving_fixtures import run_app

    args = dict(model_dir=str(exported_stereo), threads=1, max_batch=2, max_queued=2, chunk_seconds=0.5)
    return run_app({**args, "warmup_seconds": 0.2, "max_upload_bytes": 200_000}, "stereo", "/", cluster)


@pytest.fixture(scope="session")
def melody_app(cluster, exported_melody_stereo) -> str:
    """The tiny stereo melody export at "/melody": 2 slots, 4 waiting (so 4 concurrent clients are never refused,
    even before the loop has admitted the first ones), 0.5 s stream chunks; half a CPU reserved."""
    from serving_fixtures import run_app

    args = dict(model_dir=str(exported_melody_stereo), threads=1, max_batch=2, max_queued=4, chunk_seconds=0.5)
    args.update(warmup_seconds=0.2, num_cpus=0.5, max_upload_bytes=2_000_000)
    return run_app(args, "melody", "/melody", cluster)


@pytest.fixture(scope="session")
def api_keys(tmp_path_factory) -> dict[str, str]:
    """The keyed app's API keys file ("path") and its keys by id (made with ``serve-keys``' own functions):
    alice (defaults), bob (revoked), slow (burst 2, 1 per minute), single (one generation at a time), page
    (the browser tests')."""
    from musicgen_onnx.serving.auth import add_key, revoke_key

    path = tmp_path_factory.mktemp("api_keys") / "keys.json"
    keys = {
        "alice": add_key(path, "alice"),
        "bob": add_key(path, "bob"),
        "slow": add_key(path, "slow", rate_per_minute=1, burst=2),
        "single": add_key(path, "single", max_concurrent=1),
        "page": add_key(path, "page"),
    }
    revoke_key(path, "bob")
    return {"path": str(path), **keys}


@pytest.fixture(scope="session")
def keyed_app(cluster, exported_mono, api_keys) -> str:
    """The tiny mono export at "/keyed" with API keys on (``api_keys``); half a CPU reserved, so it fits."""
    from serving_fixtures import run_app

    args = dict(model_dir=str(exported_mono), threads=1, max_batch=2, max_queued=2, chunk_seconds=0.5)
    args.update(warmup_seconds=0, num_cpus=0.5, api_keys_file=api_keys["path"])
    return run_app(args, "keyed", "/keyed", cluster)
