"""Reduced-precision graphs from a weightless graph, converting one weight at a time while it is written.

The graph rewrites are onnxruntime's own, mirrored node for node, and the weight arithmetic calls
onnxruntime's own functions on each tensor, so the result is what the earlier whole-model passes
(``quantize_dynamic``, ``MatMulNBitsQuantizer``, ``convert_float_to_float16`` on a loaded model) produced,
without ever holding the model's weights:

- int8: every MatMul with a constant B -> DynamicQuantizeLinear(A) -> MatMulInteger -> Cast -> Mul(scales),
  weights per-tensor symmetric int8 (``quant_utils.quantize_data``), as ``quantize_dynamic(QInt8,
  per_channel=False, MatMulConstBOnly=True)``;
- int4 / int8 blocks: MatMul -> com.microsoft MatMulNBits (bits 4 or 8, symmetric, accuracy_level 4), blocks
  quantized by onnxruntime's C++ ``quantize_matmul_4bits`` / ``quantize_matmul_8bits``
  (``DefaultWeightOnlyQuantizer.qbits_block_quant``);
- fp16: ``convert_float_to_float16`` rewrites the graph (its initializers are data-less placeholders, so it
  only changes their type) and each float32 weight is converted with its ``convert_np_to_float16`` as written.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from .lazy_weights import Folded, FromTensor, Lazy
from .precision import roles_changed
from .precision_plan import MatMulFormat, PrecisionPlan, WeightFormat, classify, plan_for
from .weightless import WeightlessGraph, _placeholder

logger = logging.getLogger("musicgen_onnx")

#: int8 activations (per block) in MatMulNBits: the fast CPU kernels (fp32 activations run ~10x slower)
NBITS_ACCURACY_LEVEL = 4


def precision_changes(role: str, precision: str | PrecisionPlan) -> bool:
    return role in roles_changed(precision)


class _Shared:
    """One computation with several outputs (quantized values, scales, ...), freed once all are read."""

    def __init__(self, fn, count: int) -> None:
        self.fn, self.count, self.result = fn, count, None

    def take(self, index: int) -> np.ndarray:
        if self.result is None:
            self.result = self.fn()
        value = self.result[index]
        self.count -= 1
        if self.count == 0:
            self.result = None
        return value


class Part(Lazy):
    def __init__(self, shared: _Shared, index: int, shape: tuple[int, ...], dtype: Any) -> None:
        self.shared, self.index, self.shape, self.dtype = shared, index, tuple(shape), np.dtype(dtype)

    def compute(self) -> np.ndarray:
        return np.asarray(self.shared.take(self.index), dtype=self.dtype).reshape(self.shape)


class ToFloat16(Lazy):
    def __init__(self, source: Lazy, min_positive: float = 5.96e-08, max_finite: float = 65504.0) -> None:
        self.source, self.shape, self.dtype = source, source.shape, np.dtype(np.float16)
        self.min_positive, self.max_finite = min_positive, max_finite

    def compute(self) -> np.ndarray:
        from onnxruntime.transformers.float16 import convert_np_to_float16

        return convert_np_to_float16(self.source.compute(), self.min_positive, self.max_finite)


def _add(graph: WeightlessGraph, name: str, value: Lazy) -> None:
    graph.model.graph.initializer.append(_placeholder(name, value))
    graph.weights[name] = value


def _const_b(graph: WeightlessGraph, node) -> Lazy | None:
    if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx") or node.input[1] not in graph.weights:
        return None
    weight = graph.weights[node.input[1]]
    return weight if weight.dtype == np.float32 else None


def _drop_unused(graph: WeightlessGraph) -> None:
    used = {name for node in graph.model.graph.node for name in node.input}
    used |= {out.name for out in graph.model.graph.output}
    kept = [t for t in graph.model.graph.initializer if t.name in used]
    for tensor in graph.model.graph.initializer:
        if tensor.name not in used:
            graph.weights.pop(tensor.name, None)
    del graph.model.graph.initializer[:]
    graph.model.graph.initializer.extend(kept)


def _ensure_ms_domain(model) -> None:
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        entry = model.opset_import.add()
        entry.domain, entry.version = "com.microsoft", 1


def replace_nodes(graph: WeightlessGraph, nodes: list, contrib_ops: bool) -> None:
    """Make ``nodes`` the graph's nodes (``contrib_ops``: some are com.microsoft's) and drop unread weights."""
    del graph.model.graph.node[:]
    graph.model.graph.node.extend(nodes)
    if contrib_ops:
        _ensure_ms_domain(graph.model)
    _drop_unused(graph)


def _int8_weight(graph: WeightlessGraph, name: str, weight: Lazy) -> None:
    from onnx import TensorProto
    from onnxruntime.quantization.quant_utils import quantize_data

    def run():
        data = weight.compute()
        zero_point, scale, quantized = quantize_data(data.flatten(), TensorProto.INT8, True, False)
        return quantized.reshape(data.shape), scale, zero_point

    shared = _Shared(run, 3)
    _add(graph, name + "_quantized", Part(shared, 0, weight.shape, np.int8))
    _add(graph, name + "_scale", Part(shared, 1, (), np.float32))
    _add(graph, name + "_zero_point", Part(shared, 2, (), np.int8))


def _int8_nodes(graph: WeightlessGraph, node, weight: Lazy, activations: set, weights_done: set) -> list:
    """One MatMul as ``quantize_dynamic(QInt8, per_channel=False, MatMulConstBOnly=True)`` rewrites it."""
    from onnx import TensorProto, helper

    nodes = []
    a, w = node.input[0], node.input[1]
    if a not in activations:
        activations.add(a)
        outputs = [a + "_quantized", a + "_scale", a + "_zero_point"]
        nodes.append(helper.make_node("DynamicQuantizeLinear", [a], outputs, a + "_QuantizeLinear"))
    if w not in weights_done:
        weights_done.add(w)
        _int8_weight(graph, w, weight)
    name = node.name + "_quant" if node.name else ""
    scales = name + "_scales_mul" if name else f"{a}_scale_{w}_scale_mul"
    integer_out = node.output[0] + "_output_quantized"
    nodes += [
        helper.make_node("Mul", [a + "_scale", w + "_scale"], [scales + ":0"], scales),
        helper.make_node(
            "MatMulInteger", [a + "_quantized", w + "_quantized", a + "_zero_point", w + "_zero_point"],
            [integer_out], name,
        ),
        helper.make_node("Cast", [integer_out], [integer_out + "_cast_output"], integer_out + "_cast",
                         to=TensorProto.FLOAT),
        helper.make_node("Mul", [integer_out + "_cast_output", scales + ":0"], [node.output[0]],
                         name + "_output_scale_mul" if name else ""),
    ]  # fmt: skip
    return nodes


def _nbits_node(graph: WeightlessGraph, node, weight: Lazy, fmt: MatMulFormat, quantizers: dict):
    """One MatMul as ``MatMulNBitsQuantizer`` rewrites it (symmetric blocks, accuracy level 4), 4 or 8 bits."""
    from onnx import helper
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        DefaultWeightOnlyQuantizer,
    )

    bits, block_size = fmt.bits, fmt.block_size
    key = (bits, block_size)
    if key not in quantizers:
        quantizers[key] = DefaultWeightOnlyQuantizer(
            DefaultWeightOnlyQuantConfig(
                block_size=block_size, is_symmetric=True, accuracy_level=NBITS_ACCURACY_LEVEL, bits=bits
            )
        )
    quantizer = quantizers[key]
    rows, cols = weight.shape
    k_blocks = (rows + block_size - 1) // block_size
    blob = (block_size * bits + 7) // 8
    shared = _Shared(lambda: quantizer.qbits_block_quant(weight.compute())[:2], 2)
    w = node.input[1]
    suffix = f"_Q{bits}"
    _add(graph, w + suffix, Part(shared, 0, (cols, k_blocks, blob), np.uint8))
    _add(graph, w + "_scales", Part(shared, 1, (cols, k_blocks), np.float32))
    return helper.make_node(
        "MatMulNBits",
        [node.input[0], w + suffix, w + "_scales"],
        [node.output[0]],
        node.name + suffix if node.name else "",
        domain="com.microsoft",
        K=rows,
        N=cols,
        accuracy_level=NBITS_ACCURACY_LEVEL,
        bits=bits,
        block_size=block_size,
    )


def _sources(value: Lazy) -> list[str]:
    """The checkpoint parameter names a lazy weight is computed from (a recipe's leaves, recursively)."""
    if isinstance(value, FromTensor):
        return [value.name]
    if isinstance(value, Folded):
        return [name for x in value.inputs if x is not None for name in _sources(x)]
    return []


def apply_plan(graph: WeightlessGraph, plan: PrecisionPlan) -> dict[str, int]:
    """Rewrite every MatMul with a constant fp32 weight in the format ``plan`` gives its module and layer.

    Returns how many MatMuls got each format (recorded in the manifest). A uniform plan produces exactly
    the graph of onnxruntime's whole-model passes (tests/test_bounded_export.py holds them bitwise equal).
    """
    targets = []
    for node in graph.model.graph.node:
        weight = _const_b(graph, node)
        targets.append(None if weight is None else (weight, *classify(_sources(weight))))
    layers = [t[2] for t in targets if t is not None and t[2] is not None]
    num_layers = max(layers) + 1 if layers else 0
    nodes, activations, weights_done, quantizers = [], set(), set(), {}
    counts: dict[str, int] = {}
    any_nbits = False
    for node, target in zip(list(graph.model.graph.node), targets, strict=True):
        if target is None:
            nodes.append(node)
            continue
        weight, module, layer = target
        fmt = plan.format_for(module, layer, num_layers)
        if fmt.bits is not None and len(weight.shape) != 2:
            fmt = MatMulFormat(WeightFormat.FP32)
        counts[fmt.label] = counts.get(fmt.label, 0) + 1
        if fmt.weights is WeightFormat.INT8:
            nodes += _int8_nodes(graph, node, weight, activations, weights_done)
        elif fmt.bits is not None:
            nodes.append(_nbits_node(graph, node, weight, fmt, quantizers))
            any_nbits = True
        else:
            nodes.append(node)
    replace_nodes(graph, nodes, any_nbits)
    return counts


def to_fp16(graph: WeightlessGraph, keep_inputs: tuple[str, ...] = ()) -> None:
    """fp16 weights, activations and float I/O (see ``precision.convert_fp16``), weights converted lazily."""
    from onnx import TensorProto, helper
    from onnxruntime.transformers import float16

    # The converter reads an initializer's shape through numpy_helper.to_array (its data); the placeholders
    # have none, so give it the same shape from the dims for the duration of the call.
    original = float16.make_value_info_from_tensor
    float16.make_value_info_from_tensor = lambda t: helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
    try:
        keep = list(keep_inputs) if keep_inputs else False
        model = float16.convert_float_to_float16(graph.model, keep_io_types=keep)
    finally:
        float16.make_value_info_from_tensor = original
    for tensor in model.graph.initializer:
        value = graph.weights.get(tensor.name)
        if value is not None and tensor.data_type == TensorProto.FLOAT16 and value.dtype == np.float32:
            graph.weights[tensor.name] = ToFloat16(value)
    graph.model = model


def convert_precision(role: str, graph: WeightlessGraph, precision: str | PrecisionPlan) -> WeightlessGraph:
    """A converted copy of ``graph`` (an fp32 weightless graph); ``graph`` itself is unchanged.

    ``precision`` is fp16 or a MatMul plan (its name, e.g. int8, int4, cpu-fast, or a ``PrecisionPlan``);
    a plan's per-format MatMul counts are left in ``converted.matmul_counts`` (for the manifest).
    """
    converted = graph.copy()
    plan = plan_for(precision)
    if precision == "fp16":
        to_fp16(converted, ("encoder_hidden_states",) if role == "cross_kv" else ())
    elif plan is not None:
        counts = apply_plan(converted, plan)
        described = ", ".join(f"{n} {label}" for label, n in sorted(counts.items()))
        logger.info("%-15s converted to %s: %s MatMuls", role, plan.name, described)
        converted.matmul_counts = counts
        return converted
    else:
        raise ValueError(f"no conversion for precision {precision!r}")
    logger.info("%-15s converted to %s", role, precision)
    return converted
