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
        ({"texts": "x", "top_k": -1}, r"top_k must be an integer in 0\.\.2048 \(0 disables"),
        ({"texts": "x", "top_k": 4096}, r"0\.\.2048"),
        ({"texts": "x", "top_p": 0.0}, r"top_p=0 is ambiguous.*top_p=1\.0"),
        ({"texts": "x", "top_p": -0.5}, r"top_p must be in \(0, 1\]"),
        ({"texts": "x", "top_p": 1.5}, r"\(0, 1\]"),
        ({"texts": "x", "temperature": 0}, "temperature must be > 0"),
        ({"texts": "x", "seed": -1}, r"seed must be a non-negative integer"),
        ({"texts": "x", "seed": 1.5}, r"seed must be a non-negative integer"),
        ({"texts": "x", "seed": True}, r"seed must be a non-negative integer"),
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


def test_top_k_zero_means_no_top_k(model):
    """transformers and audiocraft read top_k=0 as 'no top-k filtering': the same draws as keeping every token."""
    args = dict(max_new_tokens=12, do_sample=True, top_p=1.0, seed=7)
    off = model.generate_detailed("x", top_k=0, **args).codes
    np.testing.assert_array_equal(off, model.generate_detailed("x", top_k=2048, **args).codes)
    assert not np.array_equal(off, model.generate_detailed("x", top_k=1, **args).codes)


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


@pytest.fixture
def cuda_listed_but_broken(monkeypatch):
    """What onnxruntime-gpu does on a node where CUDA cannot start (no GPU, no CUDA / cuDNN libraries): it lists
    CUDAExecutionProvider as available, then opens every session on the CPU. The CPU build given CUDA in its
    provider list behaves exactly so (a warning, then a CPU session)."""
    import warnings

    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime really has CUDA")
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Specified provider 'CUDAExecutionProvider'")
        yield


def test_auto_falls_back_to_cpu_when_cuda_does_not_start(exported_stereo, cuda_listed_but_broken, caplog):
    with caplog.at_level("WARNING", logger="musicgen_onnx"):
        model = MusicGen.load(exported_stereo)  # provider="auto"
    assert model.device == "cpu" and model.providers == ["CPUExecutionProvider"]
    assert not model.cuda_graph and not model.device_sampling
    warnings = [r.getMessage() for r in caplog.records if "could not start" in r.getMessage()]
    assert len(warnings) == 1 and "running on the CPU" in warnings[0]
    assert model.generate("x", max_new_tokens=6).shape == (1, 2, 640 * 3)


def test_explicit_cuda_that_does_not_start_fails_at_load(exported_stereo, cuda_listed_but_broken):
    from musicgen_onnx.runtime import ProviderUnavailableError

    with pytest.raises(ProviderUnavailableError, match=r"provider='cuda' requested.*could not start.*cuDNN"):
        MusicGen.load(exported_stereo, provider="cuda")


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


@pytest.mark.parametrize("text", ["{ nope", "[1, 2]", "null", '"a string"'])
def test_manifest_not_json_or_not_an_object(copy_of, text):
    (copy_of / "manifest.json").write_text(text)
    with pytest.raises(ManifestError, match="corrupt manifest"):
        MusicGen.load(copy_of)


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m["graphs"]["decoder"].update(file="../decoder.onnx"),
        lambda m: m["graphs"]["cross_kv"].update(file="/etc/passwd"),
        lambda m: m["graphs"]["decoder"].update(external_data=["../../secret.data"]),
        lambda m: m["text"].update(tokenizer_file="../tokenizer.json"),
    ],
)
def test_manifest_paths_outside_the_directory_are_refused(copy_of, edit):
    path = copy_of / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="outside the model directory"):
        MusicGen.load(copy_of, verify=False)


def test_manifest_symlink_leading_out_is_refused(copy_of, tmp_path):
    outside = tmp_path / "elsewhere.json"
    (copy_of / "tokenizer.json").rename(outside)
    (copy_of / "tokenizer.json").symlink_to(outside)
    with pytest.raises(ManifestError, match="outside the model directory"):
        MusicGen.load(copy_of, verify=False)


def test_start_token_other_than_pad_is_refused(copy_of):
    path = copy_of / "manifest.json"
    data = json.loads(path.read_text())
    data["decoder"]["decoder_start_token_id"] = 2047
    path.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=r"decoder_start_token_id \(2047\) differs from pad_token_id \(2048\)"):
        MusicGen.load(copy_of)


def test_prompt_without_audio_encoder(tiny_mono_checkpoint, tmp_path):
    from musicgen_onnx.export import export_model

    export_model(str(tiny_mono_checkpoint), tmp_path / "noenc", include_audio_encoder=False)
    model = MusicGen.load(tmp_path / "noenc")
    with pytest.raises(ValueError, match="without the EnCodec encoder"):
        model.generate("x", prompt_audio=np.zeros((1, 3200), np.float32), max_new_tokens=8)
