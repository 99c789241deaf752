"""Export: every graph against transformers' own modules, manifest contract, atomicity, bad sources."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from musicgen_onnx.export import export_model
from musicgen_onnx.export.loading import CheckpointError
from musicgen_onnx.export.validate import ValidationError, hf_decoder_reference, static_cache_feeds
from musicgen_onnx.graphs import DecoderStep
from musicgen_onnx.runtime.manifest import GRAPH_ROLES, Manifest, sha256_file
from transformers import MusicgenForConditionalGeneration

ATOL = 1e-4


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def hf_stereo(tiny_stereo_checkpoint):
    return MusicgenForConditionalGeneration.from_pretrained(tiny_stereo_checkpoint).eval()


@pytest.fixture(scope="module")
def hf_mono(tiny_mono_checkpoint):
    return MusicgenForConditionalGeneration.from_pretrained(tiny_mono_checkpoint).eval()


@pytest.mark.parametrize("which", ["stereo", "mono", "stereo_concat"])
@pytest.mark.parametrize(("batch", "seq_len", "past_len"), [(1, 1, 0), (2, 5, 0), (3, 1, 4), (1, 3, 9), (1, 1, 40)])
def test_decoder_matches_transformers(which, batch, seq_len, past_len, request):
    export_dir = request.getfixturevalue(f"exported_{which}")
    model = request.getfixturevalue(f"hf_{which.split('_')[0]}")
    session = _session(export_dir / "decoder.onnx")
    wrapper = DecoderStep(model)
    torch.manual_seed(batch * 100 + seq_len * 10 + past_len)
    inputs = wrapper.example_inputs(batch, seq_len, past_len, text_len=6)
    n = wrapper.num_layers
    names = [i.name for i in session.get_inputs()]
    total = past_len + seq_len
    if Manifest.load(export_dir).decoder.kv_cache == "static":
        ours = session.run(None, static_cache_feeds(names, list(inputs), n, total + 5))
        ours = [ours[0]] + [p[:, :, :total] for p in ours[1:]]
    else:
        ours = session.run(None, {k: v.numpy() for k, v in zip(names, inputs, strict=True)})
    ref = hf_decoder_reference(model, inputs[0], inputs[1], list(inputs[2 : 2 + 2 * n]), list(inputs[2 + 2 * n :]))
    assert ours[0].shape == (batch, model.decoder.config.num_codebooks, 2048)
    for a, b in zip(ours, ref, strict=True):
        np.testing.assert_allclose(a, b.numpy(), atol=ATOL, rtol=0)


@pytest.mark.parametrize("frames", [1, 2, 3, 50])
def test_encodec_decode_any_length(exported_stereo, hf_stereo, frames):
    session = _session(exported_stereo / "encodec_decode.onnx")
    codes = torch.randint(0, 2048, (2, 4, frames))
    (ours,) = session.run(None, {"audio_codes": codes.numpy()})
    with torch.no_grad():
        ref = hf_stereo.audio_encoder.decode(codes[None], [None]).audio_values
    assert ours.shape == (2, 1, 640 * frames)
    np.testing.assert_allclose(ours, ref.numpy(), atol=ATOL, rtol=0)


@pytest.mark.parametrize("samples", [1, 2, 3, 639, 640, 641, 3 * 640, 50 * 640 + 11])
def test_encodec_encode_any_length(exported_mono, hf_mono, samples):
    session = _session(exported_mono / "encodec_encode.onnx")
    audio = torch.randn(2, 1, samples, generator=torch.Generator().manual_seed(samples)) * 0.2
    (ours,) = session.run(None, {"audio_values": audio.numpy()})
    with torch.no_grad():
        ref = hf_mono.audio_encoder.encode(audio).audio_codes[0]
    np.testing.assert_array_equal(ours, ref.numpy())


@pytest.mark.parametrize("batch", [1, 3])
def test_text_encoder_and_cross_kv_match_transformers(exported_stereo, hf_stereo, tiny_stereo_checkpoint, batch):
    from transformers import AutoTokenizer

    texts = ["calm ambient pads", "fast drum and bass with a heavy sub bass line", "jazz"][:batch]
    tok = AutoTokenizer.from_pretrained(tiny_stereo_checkpoint)
    enc = tok(texts, padding=True, return_tensors="pt")
    (states,) = _session(exported_stereo / "text_encoder.onnx").run(
        None, {"input_ids": enc.input_ids.numpy(), "attention_mask": enc.attention_mask.numpy()}
    )
    with torch.no_grad():
        ref = hf_stereo.text_encoder(**enc).last_hidden_state
        ref = hf_stereo.enc_to_dec_proj(ref) * enc.attention_mask[..., None]
    np.testing.assert_allclose(states, ref.numpy(), atol=ATOL, rtol=0)

    kv = _session(exported_stereo / "cross_kv.onnx").run(None, {"encoder_hidden_states": states})
    with torch.no_grad():
        for i, layer in enumerate(hf_stereo.decoder.model.decoder.layers):
            attn = layer.encoder_attn
            k = attn.k_proj(ref).view(batch, -1, attn.num_heads, attn.head_dim).transpose(1, 2)
            v = attn.v_proj(ref).view(batch, -1, attn.num_heads, attn.head_dim).transpose(1, 2)
            np.testing.assert_allclose(kv[2 * i], k.numpy(), atol=ATOL, rtol=0)
            np.testing.assert_allclose(kv[2 * i + 1], v.numpy(), atol=ATOL, rtol=0)


@pytest.mark.parametrize(("which", "channels", "codebooks"), [("stereo", 2, 8), ("mono", 1, 4)])
def test_manifest_contract(which, channels, codebooks, request):
    export_dir = request.getfixturevalue(f"exported_{which}")
    manifest = Manifest.load(export_dir)
    assert Manifest.from_dict(json.loads(json.dumps(manifest.to_dict()))) == manifest
    assert set(manifest.graphs) == set(GRAPH_ROLES) - {"melody_prefix"}  # melody_prefix: melody checkpoints only
    assert (manifest.conditioning, manifest.melody, manifest.format_version) == ("cross_attention", None, 3)
    assert manifest.audio.channels == channels and manifest.decoder.num_codebooks == codebooks
    assert (manifest.audio.sampling_rate, manifest.audio.frame_rate, manifest.audio.hop_length) == (32000, 50, 640)
    assert manifest.decoder.pad_token_id == manifest.decoder.decoder_start_token_id == 2048
    assert manifest.codebooks_per_channel == 4
    g = manifest.generation
    assert (g.do_sample, g.guidance_scale, g.max_length, g.top_k) == (True, 3.0, 1500, 50)
    assert manifest.precision == "fp32" and manifest.random_weights is False
    for role, spec in manifest.graphs.items():
        assert sha256_file(export_dir / spec.file) == spec.sha256, role
        session = _session(export_dir / spec.file)
        assert [i.name for i in session.get_inputs()] == spec.inputs
        assert [o.name for o in session.get_outputs()] == spec.outputs
    assert not [p.name for p in export_dir.parent.iterdir() if p.name.startswith(".")]


def test_refuses_non_empty_target_and_overwrites_on_request(tiny_mono_checkpoint, tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="not empty"):
        export_model(str(tiny_mono_checkpoint), target, include_audio_encoder=False)
    assert (target / "keep.txt").read_text() == "user data"
    export_model(str(tiny_mono_checkpoint), target, overwrite=True, include_audio_encoder=False)
    assert not (target / "keep.txt").exists()
    assert "encodec_encode" not in Manifest.load(target).graphs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_failed_validation_leaves_nothing_behind(tiny_mono_checkpoint, tmp_path):
    target = tmp_path / "out"
    with pytest.raises(ValidationError, match="differs from PyTorch"):
        export_model(str(tiny_mono_checkpoint), target, tolerance=-1.0)
    assert list(tmp_path.iterdir()) == []


def test_missing_source_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        export_model(str(tmp_path / "nope" / "ckpt"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_non_musicgen_checkpoint(tmp_path):
    from transformers import T5Config

    T5Config(d_model=16, num_layers=1, num_heads=2, d_kv=8, d_ff=32, vocab_size=64).save_pretrained(tmp_path / "t5")
    with pytest.raises(CheckpointError, match="not a MusicGen checkpoint"):
        export_model(str(tmp_path / "t5"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_directory_without_config(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        export_model(str(tmp_path / "empty"), tmp_path / "out")


def test_unknown_random_weights_name_rejected_before_building(tmp_path):
    with pytest.raises(ValueError, match="unknown MusicGen checkpoint"):
        export_model(None, tmp_path / "out", random_weights="facebook/musicgen-huge")
    assert list(tmp_path.iterdir()) == []


def test_cli_export(tiny_mono_checkpoint, tmp_path, capsys):
    from musicgen_onnx.runtime.cli import main

    assert main(["export", str(tiny_mono_checkpoint), str(tmp_path / "cli"), "--no-audio-encoder"]) == 0
    summary = capsys.readouterr().out
    assert "exported" in summary
    assert "peak anonymous RSS" in summary and "max RSS" in summary  # both memory measures
    assert Manifest.load(tmp_path / "cli").audio.channels == 1
    assert main(["export", str(tmp_path / "missing"), str(tmp_path / "x")]) == 2
    assert "not found" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_external_data_storage(tiny_mono_checkpoint, tmp_path, monkeypatch, precision):
    """Big graphs keep weights in NAME.onnx.data (mapped by onnxruntime); the manifest checksums them."""
    from musicgen_onnx.export import onnx_io
    from musicgen_onnx.runtime import ManifestError, MusicGen

    monkeypatch.setattr(onnx_io, "EXTERNAL_DATA_MIN_BYTES", 0)
    out = tmp_path / "ext"
    export_model(str(tiny_mono_checkpoint), out, include_audio_encoder=False, precision=precision)
    manifest = Manifest.load(out)
    spec = manifest.graphs["decoder"]
    assert spec.external_data == ["decoder.onnx.data"]
    assert manifest.files["decoder.onnx.data"] == sha256_file(out / "decoder.onnx.data")
    audio = MusicGen.load(out).generate("a", max_new_tokens=8, do_sample=False)
    assert audio.shape == (1, 1, 5 * 640)
    with open(out / "decoder.onnx.data", "r+b") as handle:
        handle.seek(100)
        handle.write(b"\xff\xff\xff\xff")
    with pytest.raises(ManifestError, match=r"decoder\.onnx\.data does not match"):
        MusicGen.load(out)


def test_external_data_is_readable_by_others(tiny_mono_checkpoint, tmp_path, monkeypatch):
    import os
    import stat

    from musicgen_onnx.export import onnx_io

    monkeypatch.setattr(onnx_io, "EXTERNAL_DATA_MIN_BYTES", 0)
    old = os.umask(0o022)
    try:
        export_model(str(tiny_mono_checkpoint), tmp_path / "ext", include_audio_encoder=False)
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "ext" / "decoder.onnx.data").stat().st_mode)
    assert mode == 0o644


@pytest.mark.parametrize("which", ["stereo", "stereo_concat"])
def test_cross_attention_is_one_node_per_layer(which, request):
    """graphs/cross_attention.py: the text attention of each layer is one MultiHeadAttention node fed by the
    text mask, with none of the plain-op form left (its per-node cost is what the fused node saves)."""
    import onnx

    export_dir = request.getfixturevalue(f"exported_{which}")
    graph = onnx.load(str(export_dir / "decoder.onnx"), load_external_data=False).graph
    layers = Manifest.load(export_dir).decoder.num_layers
    fused = [n for n in graph.node if n.op_type == "MultiHeadAttention"]
    assert len(fused) == layers
    cross_inputs = {f"cross_key.{i}" for i in range(layers)} | {f"cross_value.{i}" for i in range(layers)}
    assert {name for n in fused for name in n.input[1:3]} == cross_inputs
    softmaxes = sum(n.op_type == "Softmax" for n in graph.node)
    assert softmaxes == (layers if which == "stereo_concat" else 0)  # the concat graph's self-attention only
