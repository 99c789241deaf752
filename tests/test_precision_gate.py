"""The quality gate (benchmarks/precision_quality.py) and per-module precision plans, on the tiny checkpoint.

The gate must read exactly zero drift for fp32 against itself, let int8 through, and flag a variant whose
lm head is off by a scale (a miscalibrated quantizer's failure mode); a mixed plan must put each module in
the format it names and say so in the manifest.
"""

from __future__ import annotations

import math
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from musicgen_onnx.export import export_model
from musicgen_onnx.export.precision_plan import (
    INT4_B32,
    INT4_B128,
    INT8,
    INT8_B256,
    PLANS,
    MatMulFormat,
    Module,
    PrecisionPlan,
    Rule,
    WeightFormat,
    classify,
)
from musicgen_onnx.runtime import Manifest, MusicGen

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from precision_quality import MAX_CODEBOOK_KL, compare, passes

STEPS = 40


@pytest.fixture(scope="module")
def fp32_model(exported_stereo):
    return MusicGen.load(exported_stereo)


@pytest.fixture(scope="module")
def int8_export(tiny_stereo_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("gate-int8") / "model"
    export_model(str(tiny_stereo_checkpoint), out, precision="int8", include_audio_encoder=False)
    return out


def _scaled_lm_head(source: Path, out: Path, scale: float) -> Path:
    """A copy of an fp32 export whose fused lm-head weight is multiplied by ``scale``."""
    shutil.copytree(source, out)
    path = out / "decoder.onnx"
    model = onnx.load(path)
    head = next(
        t
        for t in model.graph.initializer
        if len(t.dims) == 2 and t.dims[1] == 8 * 2048  # K codebooks x vocab
    )
    head.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(head) * np.float32(scale), head.name))
    onnx.save(model, path)
    manifest = Manifest.load(out)
    import dataclasses

    files = {name: digest for name, digest in manifest.files.items() if not name.startswith("decoder")}
    graphs = dict(manifest.graphs)
    from musicgen_onnx.runtime.manifest import sha256_file

    graphs["decoder"] = dataclasses.replace(graphs["decoder"], sha256=sha256_file(path), external_data=[])
    dataclasses.replace(manifest, graphs=graphs, files=files).save(out)
    return out


def test_fp32_against_itself_is_exact(fp32_model):
    record = compare(fp32_model, fp32_model, steps=STEPS)
    assert record.kl_per_codebook == [0.0] * 8
    assert record.top1_agreement == 1.0 and record.sampled_agreement == 1.0
    assert math.isinf(record.audio_snr_db)
    assert record.passed


def test_int8_passes_with_measurable_drift(fp32_model, int8_export):
    with MusicGen.load(int8_export) as var:
        record = compare(fp32_model, var, steps=STEPS)
    assert record.precision == "int8" and record.precision_plan["name"] == "int8"
    assert 0 < record.mean_kl <= MAX_CODEBOOK_KL, record.kl_per_codebook
    assert record.passed
    assert record.top1_agreement > 0.9
    assert record.audio_snr_db > 10


def test_int8_blocks_export_passes_the_gate(fp32_model, tiny_stereo_checkpoint, tmp_path):
    """``--precision int8-blocks``: every decoder MatMul is an 8-bit MatMulNBits (block 256), none MatMulInteger,
    and the variant stays within the gate (the tiny decoder's K of 64 is one padded block)."""
    out = tmp_path / "blocks"
    export_model(str(tiny_stereo_checkpoint), out, precision="int8-blocks", include_audio_encoder=False)
    manifest = Manifest.load(out)
    assert manifest.precision == "int8-blocks"
    assert manifest.precision_plan["matmuls"] == {"int8/b256": 13}
    graph = onnx.load(out / "decoder.onnx", load_external_data=False).graph
    attrs = [{a.name: a.i for a in n.attribute} for n in graph.node if n.op_type == "MatMulNBits"]
    assert len(attrs) == 13 and all(a["bits"] == 8 and a["block_size"] == 256 for a in attrs)
    assert not any(n.op_type in ("MatMulInteger", "MatMul") and n.input[1] in {t.name for t in graph.initializer}
                   for n in graph.node)  # fmt: skip
    with MusicGen.load(out) as var:
        record = compare(fp32_model, var, steps=STEPS)
    assert 0 < record.mean_kl <= MAX_CODEBOOK_KL, record.kl_per_codebook
    assert record.passed and record.top1_agreement > 0.9


def test_a_bad_variant_is_flagged(fp32_model, exported_stereo, tmp_path):
    bad = _scaled_lm_head(exported_stereo, tmp_path / "bad", 1.5)
    with MusicGen.load(bad) as var:
        record = compare(fp32_model, var, steps=STEPS)
    assert not record.passed
    assert record.max_codebook_kl > MAX_CODEBOOK_KL


def test_gate_rule():
    assert passes([0.001, 0.01])
    assert not passes([0.001, 0.0101])
    assert not passes([0.001, float("nan")])


def test_classify_parameter_names():
    assert classify(["layers.3.self_attn.q_proj.weight", "layers.3.self_attn.k_proj.weight"]) == (
        Module.SELF_ATTENTION,
        3,
    )
    assert classify(["layers.0.encoder_attn.out_proj.weight"]) == (Module.CROSS_ATTENTION, 0)
    assert classify(["decoder.layers.11.fc2.weight"]) == (Module.FFN, 11)
    assert classify([f"lm_heads.{k}.weight" for k in range(4)]) == (Module.LM_HEAD, None)
    assert classify(["enc_to_dec_proj.weight"]) == (Module.OTHER, None)
    assert classify(["layers.1.fc1.weight", "layers.2.fc1.weight"]) == (Module.OTHER, None)


def test_plan_rules_first_match_wins():
    plan = PrecisionPlan("p", INT4_B32, (Rule(INT8, frozenset({Module.LM_HEAD})), Rule(INT8, edge_layers=2)))
    assert plan.format_for(Module.LM_HEAD, None, 24) == INT8
    assert plan.format_for(Module.FFN, 1, 24) == INT8
    assert plan.format_for(Module.FFN, 22, 24) == INT8
    assert plan.format_for(Module.FFN, 2, 24) == INT4_B32
    assert plan.format_for(Module.SELF_ATTENTION, 21, 24) == INT4_B32
    last = Rule(INT8, layers=(-10, None))
    assert [i for i in range(24) if last.matches(Module.FFN, i, 24)] == list(range(14, 24))
    assert not last.matches(Module.LM_HEAD, None, 24)
    with pytest.raises(ValueError, match="not both"):
        Rule(INT8, edge_layers=1, layers=(0, 2))
    with pytest.raises(ValueError, match="block_size must be one of"):
        MatMulFormat(WeightFormat.INT4, 100)
    with pytest.raises(ValueError, match=r"int8 block block_size must be one of \(16, 32, 64, 128, 256\), got 512"):
        MatMulFormat(WeightFormat.INT8_BLOCKS, 512)
    assert MatMulFormat(WeightFormat.INT8_BLOCKS, 256).label == "int8/b256"


def test_mixed_plan_export(tiny_stereo_checkpoint, tmp_path):
    """lm heads int8, layer 0 int4 block 32, the rest int4 block 128 in the tiny 2-layer decoder."""
    plan = PrecisionPlan(
        "mixed-test",
        MatMulFormat(WeightFormat.INT4, 128),
        (Rule(INT8, frozenset({Module.LM_HEAD})), Rule(INT4_B32, edge_layers=1, modules=frozenset({Module.FFN}))),
    )
    out = tmp_path / "mixed"
    export_model(str(tiny_stereo_checkpoint), out, precision=plan, include_audio_encoder=False)
    manifest = Manifest.load(out)
    assert manifest.precision == "mixed-test"
    # 2 layers x 6 MatMuls + 1 fused lm head; FFN (fc1, fc2) of both layers are edge layers at 1 of 2
    assert manifest.precision_plan["matmuls"] == {"int4/b128": 8, "int4/b32": 4, "int8": 1}
    graph = onnx.load(out / "decoder.onnx", load_external_data=False)
    blocks = sorted(
        next(a.i for a in n.attribute if a.name == "block_size") for n in graph.graph.node if n.op_type == "MatMulNBits"
    )
    assert blocks == [32] * 4 + [128] * 8
    assert sum(n.op_type == "MatMulInteger" for n in graph.graph.node) == 1
    with MusicGen.load(out) as model:
        audio = model.generate(["calm piano"], max_new_tokens=12, seed=0)
    assert np.isfinite(audio).all()


def test_named_plans_are_cli_choices():
    from musicgen_onnx.export.cli import build_parser

    choices = next(a.choices for a in build_parser()._actions if a.dest == "precision")
    assert set(PLANS) <= set(choices)


def test_preset_exports_with_its_kv_cache(tmp_path):
    """``--precision cpu-fast`` brings the KV cache it was measured with unless --kv-cache is given."""
    from musicgen_onnx.export.cli import _default_kv_cache

    preset = PLANS["cpu-fast"]
    assert preset.kv_cache == "static-int8"
    assert _default_kv_cache("cpu-fast") == "static-int8"
    assert _default_kv_cache("int8") == "static"
    assert preset.format_for(Module.LM_HEAD, None, 24) == INT8
    assert preset.format_for(Module.FFN, 14, 24) == INT4_B128 and preset.format_for(Module.FFN, 13, 24) == INT8
    # the VNNI variant: the same int4 layers, 8-bit MatMulNBits blocks for the rest, the same cache
    vnni = PLANS["cpu-fast-vnni"]
    assert vnni.kv_cache == "static-int8" and _default_kv_cache("cpu-fast-vnni") == "static-int8"
    assert vnni.format_for(Module.SELF_ATTENTION, 20, 24) == INT8_B256
    assert vnni.format_for(Module.FFN, 14, 24) == INT4_B128 and vnni.format_for(Module.FFN, 13, 24) == INT8_B256
