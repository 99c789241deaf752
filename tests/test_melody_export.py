"""Melody exports: manifest contract, and the prefix decoder's cache against transformers' uncached forward."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from melody_helpers import TEXT, tune
from musicgen_onnx.export import export_model
from musicgen_onnx.graphs.decoder_melody import MelodyDecoderStep
from musicgen_onnx.runtime import MusicGen
from musicgen_onnx.runtime.manifest import Manifest, ManifestError, sha256_file
from transformers import MusicgenMelodyForConditionalGeneration

ATOL = 1e-4


@pytest.fixture(scope="module")
def hf(tiny_melody_stereo_checkpoint):
    return MusicgenMelodyForConditionalGeneration.from_pretrained(tiny_melody_stereo_checkpoint).eval()


def test_manifest(exported_melody_stereo, exported_melody_mono):
    m = Manifest.load(exported_melody_stereo)
    assert (m.conditioning, m.format_version) == ("prefix", 3)
    assert Manifest.from_dict(json.loads(json.dumps(m.to_dict()))) == m
    graphs = {"text_encoder", "melody_prefix", "decoder", "sampler", "encodec_decode", "encodec_stream"}
    graphs.add("encodec_encode")
    assert set(m.graphs) == graphs and m.codec_stream is not None  # melody streams decode statefully too
    assert (m.melody.sampling_rate, m.melody.n_fft, m.melody.hop_length) == (32000, 16384, 4096)
    assert (m.melody.num_chroma, m.melody.chroma_length, m.melody.max_seconds) == (12, 24, 30.0)
    assert m.melody.position_table == 512 + 24 + m.text.max_tokens
    assert (m.decoder.num_codebooks, m.audio.channels, m.decoder.kv_cache) == (8, 2, "static")
    for spec in m.graphs.values():
        assert sha256_file(exported_melody_stereo / spec.file) == spec.sha256
    mono = Manifest.load(exported_melody_mono)
    assert (mono.decoder.num_codebooks, mono.audio.channels, mono.conditioning) == (4, 1, "prefix")


def test_melody_manifest_without_melody_section_is_rejected(exported_melody_stereo, tmp_path):
    data = json.loads((exported_melody_stereo / "manifest.json").read_text())
    data["melody"] = None
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="melody section"):
        Manifest.load(tmp_path)


@pytest.mark.parametrize(("prefix_len", "prompt", "steps"), [(24 + 5, 1, 6), (24 + 1, 4, 3)])
def test_prefill_then_steps_equal_one_uncached_forward(exported_melody_stereo, hf, prefix_len, prompt, steps):
    """Our cache (prefix + start columns, then one column per call) vs transformers' decoder run over the whole
    sequence at once without a cache."""
    session = ort.InferenceSession(str(exported_melody_stereo / "decoder.onnx"), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    wrapper = MelodyDecoderStep(hf)
    torch.manual_seed(prefix_len + prompt)
    batch, k = 2, wrapper.num_codebooks
    prefix = torch.randn(batch, prefix_len, wrapper.hidden_size)
    ids = torch.randint(0, 2048, (batch, k, prompt + steps))
    max_len = prefix_len + prompt + steps + 2
    cache = [
        np.zeros((batch, wrapper.num_heads, max_len, wrapper.head_dim), np.float32)
        for _ in range(2 * len(wrapper.layers))
    ]
    logits = None
    past = 0
    for call in range(steps + 1):
        p = prefix.numpy() if call == 0 else np.zeros((batch, 0, wrapper.hidden_size), np.float32)
        chunk = ids[:, :, :prompt] if call == 0 else ids[:, :, prompt + call - 1 : prompt + call]
        count = p.shape[1] + chunk.shape[2]
        total = past + count
        feeds = {
            "input_ids": chunk.numpy(),
            "prefix": p,
            "position_ids": np.tile(np.arange(past, total), (batch, 1)),
            "seqlens_k": np.full(batch, total - 1, np.int32),
            "total_sequence_length": np.array(total, np.int32),
            "attention_bias": np.zeros((batch, 1, count, total), np.float32),
        }
        feeds.update(dict(zip(names[6:], cache, strict=True)))
        out = session.run(None, feeds)
        logits, cache, past = out[0], out[1:], total
    with torch.no_grad():
        full = hf.decoder(input_ids=ids[:, :, : prompt + steps].reshape(batch * k, -1), encoder_hidden_states=prefix)
    ref = full.logits.reshape(batch, k, -1, 2048)[:, :, -1]
    np.testing.assert_allclose(logits, ref.numpy(), atol=ATOL, rtol=0)


def test_concat_cache_is_refused_for_melody(tiny_melody_stereo_checkpoint, tmp_path):
    with pytest.raises(ValueError, match="static"):
        export_model(str(tiny_melody_stereo_checkpoint), tmp_path / "out", kv_cache="concat")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("precision", "min_agreement"), [("int8", 0.9), ("int4", 0.6), ("fp16", 0.9)])
def test_reduced_precision_melody_exports(
    tiny_melody_stereo_checkpoint, exported_melody_stereo, tmp_path, precision, min_agreement
):
    out = tmp_path / precision
    export_model(str(tiny_melody_stereo_checkpoint), out, precision=precision, include_audio_encoder=False)
    model = MusicGen.load(out, provider="cpu")
    assert model.manifest.precision == precision
    kwargs = dict(melody=tune(1.0), do_sample=False, max_new_tokens=30)
    reference = MusicGen.load(exported_melody_stereo, provider="cpu").generate_detailed(TEXT, **kwargs)
    result = model.generate_detailed(TEXT, **kwargs)
    assert float(np.mean(result.codes == reference.codes)) >= min_agreement
    assert np.isfinite(result.audio).all()
