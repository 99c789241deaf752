"""Trace a wrapper module without its weights, then bind each weight input to the tensor it came from.

``torch.onnx.export(..., export_params=False, keep_initializers_as_inputs=True, do_constant_folding=False)``
writes only the graph: every parameter and buffer the wrapper uses is a graph input named by its
``state_dict`` key. Both flags matter: without ``keep_initializers_as_inputs`` a deduplication pass merges
the placeholder weights, and with folding on, transposed weights become anonymous constants that hold a copy.

:func:`trace_weightless` then

1. maps every non-user input to the wrapper's parameter or buffer of that name (an error if one is missing),
2. folds the constant subgraphs over weights (a Transpose before a MatMul, the fused Q/K/V Concat, EnCodec's
   weight norm, the LSTM gate reordering) into lazy recipes (``export.lazy_weights``), dropping their nodes,
3. turns what the remaining nodes read into initializers: placeholders with shape and dtype but no data.

Nothing is copied here: the weights are computed one by one when ``export.weights_writer`` writes them.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .lazy_weights import FOLDABLE_OPS, Constant, Folded, FromTensor, Lazy

logger = logging.getLogger("musicgen_onnx")


@dataclass
class WeightlessGraph:
    """An ONNX model whose initializers are placeholders, and the lazy value of each."""

    model: Any  # onnx.ModelProto
    weights: dict[str, Lazy] = field(default_factory=dict)
    #: MatMuls per weight format after a precision plan was applied (``lazy_precision.apply_plan``)
    matmul_counts: dict[str, int] = field(default_factory=dict)

    def copy(self) -> WeightlessGraph:
        import onnx

        model = onnx.ModelProto()
        model.CopyFrom(self.model)
        return WeightlessGraph(model, dict(self.weights))


def _placeholder(name: str, value: Lazy):
    from onnx import TensorProto, helper

    tensor = TensorProto()
    tensor.name = name
    tensor.dims.extend(value.shape)
    tensor.data_type = helper.np_dtype_to_tensor_dtype(value.dtype)
    return tensor


def _weight_sources(module) -> dict[str, Any]:
    sources: dict[str, Any] = {}
    for name, tensor in module.named_buffers(remove_duplicate=False):
        if tensor is not None:
            sources[name] = tensor
    for name, tensor in module.named_parameters(remove_duplicate=False):
        sources[name] = tensor
    sources.update(module.state_dict(keep_vars=True))
    return sources


def trace_weightless(
    module,
    example_inputs: Sequence,
    *,
    input_names: list[str],
    output_names: list[str],
    dynamic_axes: dict[str, dict[int, str]],
    opset: int,
) -> WeightlessGraph:
    """Trace ``module`` with the TorchScript exporter, weights left out (see the module docstring)."""
    import onnx
    import torch

    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            tuple(example_inputs),
            buffer,
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            opset_version=opset,
            export_params=False,
            keep_initializers_as_inputs=True,
            do_constant_folding=False,
            dynamo=False,
        )
    model = onnx.load_from_string(buffer.getvalue())
    del buffer
    sources = _weight_sources(module)
    user = set(input_names)
    weights: dict[str, Lazy] = {}
    for graph_input in model.graph.input:
        if graph_input.name in user:
            continue
        if graph_input.name not in sources:
            raise RuntimeError(f"traced graph input {graph_input.name!r} is neither a user input nor a weight")
        weights[graph_input.name] = FromTensor(sources[graph_input.name], graph_input.name)
    kept = [i for i in model.graph.input if i.name in user]
    del model.graph.input[:]
    model.graph.input.extend(kept)
    graph = WeightlessGraph(model)
    _fold_and_bind(graph, weights)
    return graph


def _attributes(node) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _fold_and_bind(graph: WeightlessGraph, weights: dict[str, Lazy]) -> None:
    """Fold the constant subgraphs over weights; make what the remaining nodes read initializers."""
    from onnx import numpy_helper

    model = graph.model
    values: dict[str, Lazy] = dict(weights)
    derived = set(weights)  # names computed from at least one weight
    kept_nodes = []
    for node in model.graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and len(node.attribute) == 1:
            attr = node.attribute[0]
            if attr.name == "value":
                values[node.output[0]] = Constant(numpy_helper.to_array(attr.t))
            kept_nodes.append(node)
            continue
        inputs = [name for name in node.input if name]
        foldable = (
            node.op_type in FOLDABLE_OPS
            and node.domain in ("", "ai.onnx")
            and len(node.output) == 1
            and inputs
            and all(name in values for name in inputs)
            and any(name in derived for name in inputs)
        )
        if foldable:
            try:
                folded = Folded(node.op_type, [values[n] if n else None for n in node.input], _attributes(node))
            except (NotImplementedError, RuntimeError, TypeError, ValueError, IndexError) as exc:
                logger.debug("not folding %s %s: %s", node.op_type, node.name, exc)
            else:
                values[node.output[0]] = folded
                derived.add(node.output[0])
                continue
        kept_nodes.append(node)

    needed = {name for node in kept_nodes for name in node.input if name in derived}
    needed |= {out.name for out in model.graph.output if out.name in derived}
    # drop Constant nodes that only fed folded nodes
    used = {name for node in kept_nodes for name in node.input} | {out.name for out in model.graph.output}
    kept_nodes = [n for n in kept_nodes if n.op_type != "Constant" or any(o in used for o in n.output)]
    del model.graph.node[:]
    model.graph.node.extend(kept_nodes)
    order = [name for name in values if name in needed]  # trace order: weights first, then folded values
    for name in order:
        model.graph.initializer.append(_placeholder(name, values[name]))
        graph.weights[name] = values[name]
    logger.debug("weightless graph: %d initializers from %d weights", len(order), len(weights))
