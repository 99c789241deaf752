"""The int8 KV cache (``--kv-cache static-int8``, docs/design.md §6): the graph keeps an int8 cache with the
calibrated per-channel scales, its logits stay close to the fp32 cache's, rows at different positions stay
independent, and the manifest says which cache an export has. Tiny stereo checkpoint, fp32 weights, so every
difference from the fp32 export is the cache's."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from mixed_rows import assert_slot0_independent
from musicgen_onnx.runtime import MusicGen
from musicgen_onnx.runtime.engine import Engine
from musicgen_onnx.runtime.manifest import KVCache, Manifest
from musicgen_onnx.runtime.slots import SlotDecoder

TEXTS = ["an upbeat rock song with electric guitars and loud drums", "calm piano", "lo-fi beat"]
#: teacher-forced logits of the int8 cache vs the fp32 cache: max |diff| / max(1, max |fp32 logits|). Measured
#: 1.2e-4 on the export's probe; per-channel int8 has 1/254 of each channel's range as its step.
LOGITS_TOLERANCE = 5e-3


@pytest.fixture(scope="module")
def exported_int8_cache(tiny_stereo_checkpoint, tmp_path_factory):
    from musicgen_onnx.export import export_model

    out = tmp_path_factory.mktemp("exports") / "stereo_kv_int8"
    export_model(str(tiny_stereo_checkpoint), out, kv_cache="static-int8", include_audio_encoder=False)
    return out


def _teacher_forced(export_dir, tokens: np.ndarray, texts: list[str]) -> list[np.ndarray]:
    """Logits of every step of ``tokens`` [T, K] fed to one slot per text, all rows at the same positions."""
    engine = Engine.open(export_dir, provider="cpu")
    d = engine.manifest.decoder
    dec = SlotDecoder(engine.decoder, engine.manifest, slots=len(texts), length=tokens.shape[0] + 1)
    for slot, text in enumerate(texts):
        cond = engine.condition([text], 1)
        dec.set_text(slot, [kv[0] for kv in cond.cross_kv], cond.text_mask[0])
    out = []
    for t, column in enumerate(tokens):
        dec.ids[:, :, 0] = column
        dec.positions[:] = t
        out.append(dec.step(dec.rows).copy())
    assert d.kv_cache in (KVCache.STATIC, KVCache.STATIC_INT8)
    return out


def test_manifest_and_graph_record_the_int8_cache(exported_int8_cache, exported_stereo):
    manifest = Manifest.load(exported_int8_cache)
    assert manifest.decoder.kv_cache is KVCache.STATIC_INT8
    assert Manifest.load(exported_stereo).decoder.kv_cache is KVCache.STATIC  # the default stays fp32
    model = onnx.load(str(exported_int8_cache / "decoder.onnx"))
    d = manifest.decoder
    types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.output]}
    for i in range(d.num_layers):
        for name in (f"past_key.{i}", f"past_value.{i}", f"present_key.{i}", f"present_value.{i}"):
            assert types[name] == onnx.TensorProto.INT8
    scales = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer if t.name.startswith("kv_scale")}
    assert len(scales) == 2 * d.num_layers
    assert all(s.shape == (1, d.num_heads, 1, d.head_dim) and (s > 0).all() for s in scales.values())
    attention = [n for n in model.graph.node if n.op_type == "GroupQueryAttention"]
    assert len(attention) == d.num_layers
    for node in attention:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert (attrs["k_quant_type"], attrs["v_quant_type"], attrs["kv_cache_bit_width"]) == (
            b"PER_CHANNEL",
            b"PER_CHANNEL",
            8,
        )
    # the runtime allocates int8 buffers for it
    engine = Engine.open(exported_int8_cache, provider="cpu")
    dec = SlotDecoder(engine.decoder, engine.manifest, slots=1, length=8)
    assert all(c.dtype == np.int8 for c in dec.cache) and dec.logits.dtype == np.float32


def test_cache_holds_the_fp32_values_quantized_with_the_scales(exported_int8_cache, exported_stereo):
    """After the same steps, every written cache entry is round(fp32 K or V / scale), saturated to int8 (within
    one step where the rounding of a slightly different float lands on the other side of .5)."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 2048, (12, 8))
    caches = []
    for export in (exported_stereo, exported_int8_cache):
        engine = Engine.open(export, provider="cpu")
        dec = SlotDecoder(engine.decoder, engine.manifest, slots=1, length=16)
        cond = engine.condition([TEXTS[0]], 1)
        dec.set_text(0, [kv[0] for kv in cond.cross_kv], cond.text_mask[0])
        for t, column in enumerate(tokens):
            dec.ids[:, :, 0] = column
            dec.positions[:] = t
            dec.step(2)
        caches.append(dec.cache)
    model = onnx.load(str(exported_int8_cache / "decoder.onnx"))
    scales = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer if t.name.startswith("kv_scale")}
    for i, (fp32, int8) in enumerate(zip(*caches, strict=True)):
        scale = scales[f"kv_scale.{'key' if i % 2 == 0 else 'value'}.{i // 2}"]
        expected = np.clip(np.round(fp32[:, :, :12] / scale), -128, 127)
        assert np.abs(int8[:, :, :12].astype(np.int32) - expected).max() <= 1
        assert (int8[:, :, 12:] == 0).all()  # positions never written stay untouched


def test_teacher_forced_logits_close_to_the_fp32_cache(exported_int8_cache, exported_stereo):
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, 2048, (40, 8))
    ref = _teacher_forced(exported_stereo, tokens, TEXTS[:2])
    ours = _teacher_forced(exported_int8_cache, tokens, TEXTS[:2])
    worst = max(float(np.abs(a - b).max()) / max(1.0, float(np.abs(b).max())) for a, b in zip(ours, ref, strict=True))
    assert 0 < worst <= LOGITS_TOLERANCE  # 0 would mean the cache was not quantized at all
    agree = np.mean([(a.argmax(-1) == b.argmax(-1)).mean() for a, b in zip(ours, ref, strict=True)])
    assert agree >= 0.98


def test_rows_at_different_positions_stay_independent(exported_int8_cache):
    """Continuous batching with the int8 cache: a row's logits in a batch whose other rows are at other positions
    equal the row's logits alone (the scales are static, so no row changes another's quantization)."""
    engine = Engine.open(exported_int8_cache, provider="cpu")
    d = engine.manifest.decoder
    rng = np.random.default_rng(2)
    tokens = rng.integers(0, d.vocab_size, (10, d.num_codebooks))
    conds = [engine.condition([text], 1) for text in TEXTS]

    assert_slot0_independent(engine, conds, tokens, rng, length=32, lead=5)


def test_generation_with_the_int8_cache(exported_int8_cache, exported_stereo):
    """Greedy codes through the batching engine: requests together equal each alone, and nearly all tokens equal
    the fp32 cache's (the tiny model's lm heads are scaled, so near-ties are rare)."""
    specs = [dict(texts=TEXTS[0], duration=1.0), dict(texts=TEXTS[1], duration=0.7, guidance_scale=1.0)]
    codes = {}
    for export in (exported_stereo, exported_int8_cache):
        with MusicGen.load(export, provider="cpu", max_batch=2) as model:
            alone = [model.generate_detailed(s["texts"], do_sample=False, **_rest(s)).codes for s in specs]
            subs = [model.submit(s["texts"], do_sample=False, **_rest(s)) for s in specs]
            together = [s.result().codes for s in subs]
        for a, b in zip(alone, together, strict=True):
            np.testing.assert_array_equal(a, b)
        codes[export] = alone
    agree = np.mean([(a == b).mean() for a, b in zip(codes[exported_stereo], codes[exported_int8_cache], strict=True)])
    assert agree >= 0.95


def _rest(spec: dict) -> dict:
    return {k: v for k, v in spec.items() if k != "texts"}


def test_unsupported_combinations_are_refused(tiny_stereo_checkpoint, tmp_path):
    from musicgen_onnx.export import export_model

    with pytest.raises(ValueError, match=r"fp16.*int8 cache is for the CPU"):
        export_model(str(tiny_stereo_checkpoint), tmp_path / "a", precision="fp16", kv_cache="static-int8")
    with pytest.raises(ValueError, match="static-int8"):
        export_model(str(tiny_stereo_checkpoint), tmp_path / "b", kv_cache="int8")
