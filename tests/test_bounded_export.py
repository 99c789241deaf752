"""Bounded-memory export: the weightless trace + per-tensor writer against the whole-model exporter it replaced.

The reference here is the previous path, kept in the library: ``onnx_io.export_module`` (TorchScript export
with the weights and constant folding, ``onnx.load`` + re-save) and ``precision.apply_precision``
(onnxruntime's ``quantize_dynamic`` / ``MatMulNBitsQuantizer`` / ``convert_float_to_float16`` on the loaded
model). Both paths trace the same wrapper modules, so onnxruntime must give bitwise identical outputs.
Parity with transformers itself is covered by test_export.py (every graph of the new exports).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from musicgen_onnx.export import export_model, onnx_io
from musicgen_onnx.export.exporter import _plans
from musicgen_onnx.export.precision import apply_precision
from musicgen_onnx.runtime.manifest import Manifest
from transformers import MusicgenForConditionalGeneration


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _feeds(role: str, session: ort.InferenceSession, rng: np.random.Generator, step: bool) -> dict[str, np.ndarray]:
    """Random inputs of the right types and shapes for one graph (batch 2; the decoder: prefill of 3 or a step)."""
    seq_len = 1 if step else 3
    special = {
        "total_sequence_length": np.array(6 if step else 3, np.int32),
        # batch 3 (the default of every named dimension below); rows at different positions in a step
        "position_ids": np.array([[5], [4], [5]]) if step else np.tile(np.arange(3, dtype=np.int64), (3, 1)),
        "top_k": np.array([7], np.int64),
        "guidance_scale": np.array(2.5, np.float32),
        "temperature": np.array(0.8, np.float32),
        "top_p": np.array(0.9, np.float32),
    }
    if role == "encodec_decode":
        return {"audio_codes": rng.integers(0, 2048, (2, 4, 5)).astype(np.int64)}
    if role == "encodec_encode":
        return {"audio_values": (rng.standard_normal((2, 1, 640 * 4 + 77)) * 0.1).astype(np.float32)}
    feeds = {}
    for arg in session.get_inputs():
        if arg.name in special:
            feeds[arg.name] = special[arg.name]
            continue
        shape = [d if isinstance(d, int) else {"max_len": 8, "seq_len": seq_len}.get(d, 3) for d in arg.shape]
        if arg.name in ("attention_mask", "encoder_attention_mask"):
            feeds[arg.name] = np.ones(shape, np.int64)
            feeds[arg.name][-1, -1] = 0
        elif "int" in arg.type:
            high = 500 if role == "text_encoder" else 2049
            feeds[arg.name] = rng.integers(0, high, shape).astype(np.int64)
        else:
            dtype = np.float16 if "float16" in arg.type else np.float32
            values = rng.random(shape) if arg.name == "uniform" else rng.standard_normal(shape)
            feeds[arg.name] = values.astype(dtype)
    return feeds


def _previous_export(checkpoint: Path, out: Path, precision: str, roles: set[str]) -> None:
    """The graphs as the whole-model exporter wrote them (weights traced in, folded by torch, re-saved)."""
    model = MusicgenForConditionalGeneration.from_pretrained(checkpoint).eval()
    out.mkdir(parents=True)
    torch.manual_seed(0)
    for plan in _plans(True, "static", precision):
        if plan.role not in roles:
            continue
        wrapper = plan.build(model).eval()
        in_names, out_names, axes = plan.names(wrapper)
        path = out / plan.file
        onnx_io.export_module(
            wrapper,
            plan.inputs(model, wrapper),
            path,
            input_names=in_names,
            output_names=out_names,
            dynamic_axes=axes,
        )
        apply_precision(plan.role, path, precision)


ALL_ROLES = {"text_encoder", "cross_kv", "decoder", "sampler", "encodec_decode", "encodec_encode"}


@pytest.mark.parametrize(
    ("precision", "roles"),
    [
        ("fp32", ALL_ROLES),
        ("int8", {"decoder"}),
        ("int4", {"decoder"}),
        ("int8-blocks", {"decoder"}),
        ("fp16", {"decoder", "cross_kv"}),
    ],
)
def test_same_outputs_as_the_whole_model_exporter(tiny_stereo_checkpoint, exported_stereo, tmp_path, precision, roles):
    if precision == "fp32":
        new = exported_stereo
    else:
        new = tmp_path / "new"
        export_model(str(tiny_stereo_checkpoint), new, precision=precision, include_audio_encoder=False)
    old = tmp_path / "old"
    _previous_export(tiny_stereo_checkpoint, old, precision, roles)
    rng = np.random.default_rng(3)
    for role in sorted(roles):
        file = f"{role}.onnx"
        ours, theirs = _session(new / file), _session(old / file)
        assert [i.name for i in ours.get_inputs()] == [i.name for i in theirs.get_inputs()], role
        for step in (False, True):
            feeds = _feeds(role, theirs, rng, step)
            for a, b in zip(ours.run(None, feeds), theirs.run(None, feeds), strict=True):
                assert a.dtype == b.dtype and a.shape == b.shape, role
                np.testing.assert_array_equal(a, b, err_msg=f"{precision} {role}")


@pytest.mark.parametrize("which", ["stereo", "mono", "stereo_concat"])
def test_graphs_keep_only_user_inputs(which, request):
    export_dir = request.getfixturevalue(f"exported_{which}")
    manifest = Manifest.load(export_dir)
    for role, spec in manifest.graphs.items():
        model = onnx.load(str(export_dir / spec.file), load_external_data=False)
        assert [i.name for i in model.graph.input] == spec.inputs, role
        initializers = {t.name for t in model.graph.initializer}
        used = {name for node in model.graph.node for name in node.input}
        assert initializers <= used, f"{role}: unused initializers {sorted(initializers - used)[:5]}"


@pytest.mark.parametrize("precision", ["fp32", "int4"])
def test_large_initializers_are_external_and_aligned(tiny_stereo_checkpoint, tmp_path, monkeypatch, precision):
    from onnx.external_data_helper import uses_external_data

    monkeypatch.setattr(onnx_io, "EXTERNAL_DATA_MIN_BYTES", 0)
    out = tmp_path / "ext"
    export_model(str(tiny_stereo_checkpoint), out, include_audio_encoder=False, precision=precision)
    for role, spec in Manifest.load(out).graphs.items():
        model = onnx.load(str(out / spec.file), load_external_data=False)
        if role == "sampler":  # no weights at all
            assert spec.external_data == [] and not model.graph.initializer
            continue
        assert spec.external_data == [f"{spec.file}.data"], role
        size = (out / spec.external_data[0]).stat().st_size
        for tensor in model.graph.initializer:
            if not uses_external_data(tensor):
                assert len(tensor.raw_data) < 1024 and not tensor.float_data, (role, tensor.name)
                continue
            info = {e.key: int(e.value) for e in tensor.external_data if e.key in ("offset", "length")}
            assert info["offset"] + info["length"] <= size
            if info["length"] >= 1 << 20:
                assert info["offset"] % (1 << 16) == 0, (role, tensor.name)
        # the data file holds exactly the tensors the graph reads: onnx loads them back to the same values
        loaded = onnx.load(str(out / spec.file))
        assert all(onnx.numpy_helper.to_array(t).size for t in loaded.graph.initializer)


def _tiny_meta_decoder():
    from tiny_checkpoint import tiny_config
    from transformers import MusicgenForCausalLM

    with torch.device("meta"):
        return MusicgenForCausalLM._from_config(tiny_config(channels=2).decoder)


def test_random_decoder_same_in_memory_and_mapped(tmp_path):
    """Module-by-module random init gives the same weights whether kept in memory or mapped from scratch."""
    from musicgen_onnx.export.random_init import ScratchFile, materialize

    in_memory, mapped = _tiny_meta_decoder(), _tiny_meta_decoder()
    materialize(in_memory, in_memory, seed=5)
    scratch = tmp_path / "weights.bin"
    materialize(mapped, mapped, seed=5, store=ScratchFile(scratch))
    a, b = in_memory.state_dict(), mapped.state_dict()
    assert a.keys() == b.keys() and not any(t.is_meta for t in [*a.values(), *b.values()])
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    # transformers' own init: N(0, 0.02) projections, unit layer norms, sinusoidal positions
    assert abs(float(a["model.decoder.layers.0.fc1.weight"].std()) - 0.02) < 0.002
    assert torch.equal(a["model.decoder.layer_norm.weight"], torch.ones_like(a["model.decoder.layer_norm.weight"]))
    assert float(in_memory.model.decoder.embed_positions.weights.abs().sum()) > 0
    # mapped tensors read the scratch file's bytes
    blob = np.fromfile(scratch, dtype=np.uint8)
    fc1 = mapped.model.decoder.layers[1].fc1.weight.detach().numpy()
    assert np.shares_memory(fc1, fc1) and blob.size >= sum(t.numel() * 4 for t in b.values())
    other = _tiny_meta_decoder()
    materialize(other, other, seed=6)
    assert not torch.equal(other.lm_heads[0].weight, in_memory.lm_heads[0].weight)


def test_writer_holds_one_tensor_at_a_time(tmp_path):
    """Writing 24 x 32 MB of lazily computed weights never holds more than a couple of them."""
    from musicgen_onnx.export.lazy_weights import Lazy
    from musicgen_onnx.export.memory import PeakMemory, anon_rss_bytes, return_freed_memory_to_os
    from musicgen_onnx.export.weightless import WeightlessGraph, _placeholder
    from musicgen_onnx.export.weights_writer import write_model
    from onnx import TensorProto, helper

    if anon_rss_bytes() is None:
        pytest.skip("needs /proc/self/status (Linux)")
    return_freed_memory_to_os()

    class Ones(Lazy):
        def __init__(self, value: float) -> None:
            self.shape, self.dtype, self.value = (2048, 4096), np.dtype(np.float32), value

        def compute(self) -> np.ndarray:
            return np.full(self.shape, self.value, np.float32)

    count = 24
    names = [f"w{i}" for i in range(count)]
    nodes = [helper.make_node("Sum", names, ["y"])]
    graph = helper.make_graph(nodes, "g", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2048, 4096])])
    weightless = WeightlessGraph(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    for i, name in enumerate(names):
        weightless.weights[name] = Ones(float(i))
        weightless.model.graph.initializer.append(_placeholder(name, weightless.weights[name]))
    before = anon_rss_bytes()
    with PeakMemory(interval=0.005) as memory:
        external = write_model(weightless, tmp_path / "g.onnx", external_min_bytes=0)
    assert external == ["g.onnx.data"]
    growth = memory.peak_anon - before
    assert growth < 4 * 32 * 2**20, f"writer grew anonymous memory by {growth / 1e6:.0f} MB for 805 MB of weights"
    (result,) = _session(tmp_path / "g.onnx").run(None, {})
    assert float(result[0, 0]) == sum(range(count))


def _leaves(value) -> list:
    """The FromTensor leaves of a lazy weight (a recipe's inputs, recursively)."""
    from musicgen_onnx.export.lazy_weights import FromTensor

    if isinstance(value, FromTensor):
        return [value]
    return [leaf for x in getattr(value, "inputs", ()) if x is not None for leaf in _leaves(x)]


@pytest.mark.parametrize("which", ["stereo", "melody_stereo"])
def test_wrappers_hold_no_weight_copies(which, request):
    """Every weight a traced graph reads is a parameter of the loaded checkpoint or a recipe over its parameters:
    a wrapper that stored its own fused copy (Q/K/V, lm heads) would hold it in anonymous memory for the whole
    export. The wrappers' own buffers (a sinusoid table) are small constants and allowed."""
    from musicgen_onnx.export.exporter import MAX_TEXT_TOKENS, GraphPlan
    from musicgen_onnx.export.melody import is_melody_model, melody_plans
    from musicgen_onnx.export.weightless import trace_weightless
    from transformers import AutoConfig, MusicgenMelodyForConditionalGeneration

    checkpoint = request.getfixturevalue(f"tiny_{which}_checkpoint")
    melody = AutoConfig.from_pretrained(checkpoint).model_type == "musicgen_melody"
    cls = MusicgenMelodyForConditionalGeneration if melody else MusicgenForConditionalGeneration
    model = cls.from_pretrained(checkpoint).eval()
    assert is_melody_model(model) == melody
    plans = _plans(True, "static", "fp32")
    if melody:
        plans = melody_plans(GraphPlan, plans, MAX_TEXT_TOKENS)
    own = {id(p) for p in model.parameters()}
    for plan in plans:
        wrapper = plan.build(model).eval()
        in_names, out_names, axes = plan.names(wrapper)
        graph = trace_weightless(
            wrapper,
            plan.inputs(model, wrapper),
            input_names=in_names,
            output_names=out_names,
            dynamic_axes=axes,
            opset=onnx_io.DEFAULT_OPSET,
        )
        for name, value in graph.weights.items():
            for leaf in _leaves(value):
                if isinstance(leaf.tensor, torch.nn.Parameter):
                    assert id(leaf.tensor) in own, f"{plan.role}: {name} reads a parameter the checkpoint lacks"
