"""Bad input gets a clear error naming the problem and the valid range, before any heavy work."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from musicgen_onnx.runtime import ManifestError, MusicGen


@pytest.fixture(scope="module")
def model(exported_stereo):
    return MusicGen.load(exported_stereo, provider="cpu")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"texts": []}, "non-empty list"),
        ({"texts": [""]}, "empty"),
        ({"texts": ["ok", 3]}, r"texts\[1\] must be a string"),
        ({"texts": "x", "duration": 0}, "positive number"),
        ({"texts": "x", "duration": -2}, "positive number"),
        ({"texts": "x", "duration": float("nan")}, "positive number"),
        ({"texts": "x", "duration": 1000}, r"0 < duration <= "),
        ({"texts": "x", "duration": 1, "max_new_tokens": 10}, "not both"),
        ({"texts": "x", "max_new_tokens": 2}, r"max_new_tokens must be in \d+\.\.\d+"),
        ({"texts": "x", "max_new_tokens": 10_000}, r"max_new_tokens must be in"),
        ({"texts": "x", "top_k": 0}, r"top_k must be an integer in 1\.\.2048"),
        ({"texts": "x", "top_k": 4096}, r"1\.\.2048"),
        ({"texts": "x", "top_p": 0.0}, r"top_p must be in \(0, 1\]"),
        ({"texts": "x", "top_p": 1.5}, r"\(0, 1\]"),
        ({"texts": "x", "temperature": 0}, "temperature must be > 0"),
        ({"texts": "x", "guidance_scale": 0.5}, r"guidance_scale must be a number >= 1 \(1 disables"),
        ({"texts": "x", "prompt_audio": np.zeros((2, 0), np.float32)}, "empty"),
        ({"texts": "x", "prompt_audio": np.full((2, 100), np.nan, np.float32)}, "NaN or inf"),
        ({"texts": "x", "prompt_audio": np.zeros((1, 1, 1, 100), np.float32)}, "rank 4"),
        ({"texts": "x", "prompt_audio": np.zeros((2, 32000), np.float32), "duration": 0.5}, "not shorter than"),
        ({"texts": ["a", "b", "c"], "prompt_audio": np.zeros((2, 2, 999), np.float32)}, "batch 2 but there are 3"),
    ],
)
def test_bad_generate_arguments(model, kwargs, match):
    texts = kwargs.pop("texts")
    with pytest.raises(ValueError, match=match):
        model.generate(texts, **kwargs)


def test_long_text_prompt_rejected(model):
    with pytest.raises(ValueError, match="maximum is 512"):
        model.generate(" ".join(["music"] * 2000), max_new_tokens=8)


def test_unavailable_cuda_is_an_error_not_a_fallback(exported_stereo):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA; the error path is for CPU-only installs")
    with pytest.raises(ValueError, match="CUDAExecutionProvider"):
        MusicGen.load(exported_stereo, provider="cuda")
    with pytest.raises(ValueError, match="provider must be one of"):
        MusicGen.load(exported_stereo, provider="tpu")


def test_missing_directory_and_manifest(tmp_path):
    with pytest.raises(FileNotFoundError, match="model directory not found"):
        MusicGen.load(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="not a musicgen-onnx export"):
        MusicGen.load(tmp_path)


@pytest.fixture
def copy_of(exported_stereo, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(exported_stereo, target)
    return target


def test_missing_graph(copy_of):
    (copy_of / "decoder.onnx").unlink()
    with pytest.raises(FileNotFoundError, match=r"decoder\.onnx is missing"):
        MusicGen.load(copy_of)


def test_corrupt_graph_fails_checksum(copy_of):
    with open(copy_of / "encodec_decode.onnx", "ab") as handle:
        handle.write(b"\0garbage")
    with pytest.raises(ManifestError, match="sha256"):
        MusicGen.load(copy_of)


def test_corrupt_graph_without_verification_still_clear(copy_of):
    (copy_of / "cross_kv.onnx").write_bytes(b"not a model")
    with pytest.raises(ValueError, match=r"cannot load .*cross_kv\.onnx"):
        MusicGen.load(copy_of, verify=False)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda m: m.update(format_version=99), "newer than this runtime supports"),
        (lambda m: m.update(format_version=1), "older than this runtime supports.*re-export"),
        (lambda m: m.update(format="something-else"), "not a musicgen-onnx manifest"),
        (lambda m: m.pop("decoder"), "corrupt manifest"),
        (lambda m: m["graphs"].pop("decoder"), "lacks required graphs: decoder"),
    ],
)
def test_bad_manifest(copy_of, edit, match):
    path = copy_of / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=match):
        MusicGen.load(copy_of)


def test_manifest_not_json(copy_of):
    (copy_of / "manifest.json").write_text("{ nope")
    with pytest.raises(ManifestError, match="corrupt manifest"):
        MusicGen.load(copy_of)


def test_prompt_without_audio_encoder(tiny_mono_checkpoint, tmp_path):
    from musicgen_onnx.export import export_model

    export_model(str(tiny_mono_checkpoint), tmp_path / "noenc", include_audio_encoder=False)
    model = MusicGen.load(tmp_path / "noenc")
    with pytest.raises(ValueError, match="without the EnCodec encoder"):
        model.generate("x", prompt_audio=np.zeros((1, 3200), np.float32), max_new_tokens=8)
