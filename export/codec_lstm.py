"""int8 LSTM weights in EnCodec's decoder graphs, and the audio bound they are held to.

Why: EnCodec's decoder runs its two 1024-wide LSTM layers once per frame, and onnxruntime's fp32 LSTM re-reads
the 16 MB recurrent matrix of each layer at every one of them. With int8 weights (com.microsoft
``DynamicQuantizeLSTM``, one scale per gate row) a 10 s stereo decode took 1.36 instead of 1.62 s on a 2-vCPU
VNNI machine (benchmarks/codec_ops.py), at ~74 dB SNR against the fp32 graph; paired in the runtime, 0.13-0.16 s
of a 10 s clip and ~13 ms of every 1 s stream chunk. That matters where the clip's budget is real time
(docs/design.md §8 and §10).

The token-level quality gate (KL of the decoder's distributions) does not see the codec, so the converted graph
is held to an audio bound instead: the SNR of its audio against PyTorch's EnCodec on the same codes must be at
least :data:`MIN_SNR_DB`, the bound streamed audio is held to. The rewrite is the one onnxruntime's
``quantize_dynamic(op_types_to_quantize=["LSTM"], per_channel=True, weight_type=QInt8)`` makes (weights per
gate row with its ``quantize_data``, transposed to [directions, input, 4 * hidden]), done on the weightless graph
so that no weight is held longer than it takes to write it (tests/test_codec_lstm.py holds the two equal).
"""

from __future__ import annotations

import enum
import logging
from pathlib import Path

import numpy as np
from musicgen_onnx.runtime.streaming import snr_db

from . import onnx_io
from .lazy_precision import Part, _add, _Shared, replace_nodes
from .lazy_weights import Lazy
from .precision_plan import PrecisionPlan, plan_for
from .weightless import WeightlessGraph
from .weights_writer import write_model

logger = logging.getLogger("musicgen_onnx")

#: the graphs that decode audio from codes (the EnCodec encoder, run once per audio prompt, stays fp32)
CODEC_ROLES = ("encodec_decode", "encodec_stream")
#: least SNR of the int8-LSTM graph's audio against PyTorch's EnCodec (the streaming bound, docs/design.md §10)
MIN_SNR_DB = 40.0


class CodecLSTM(str, enum.Enum):
    """Weights of the LSTM layers in EnCodec's decoder graphs (manifest ``codec_lstm``)."""

    FP32 = "fp32"
    INT8 = "int8"


CODEC_LSTM_CHOICES = tuple(choice.value for choice in CodecLSTM)


def parse_codec_lstm(value: CodecLSTM | str) -> CodecLSTM:
    try:
        return CodecLSTM(value)
    except ValueError:
        raise ValueError(f"codec_lstm must be one of {CODEC_LSTM_CHOICES}, got {value!r}") from None


def _per_row_int8(weight: Lazy):
    """[D, 4H, I] -> (int8 [D, I, 4H], scales [D, 4H], zero points [D, 4H]) as onnxruntime's LSTMQuant."""
    from onnx import TensorProto
    from onnxruntime.quantization.quant_utils import quantize_data

    def run():
        data = weight.compute()
        directions, rows, width = data.shape
        flat = data.reshape(directions * rows, width)
        quantized = np.empty(flat.shape, np.int8)
        scales = np.empty(len(flat), np.float32)
        zero_points = np.empty(len(flat), np.int8)
        for i, row in enumerate(flat):
            zero_points[i], scales[i], quantized[i] = quantize_data(row, TensorProto.INT8, True, False)
        quantized = quantized.reshape(directions, rows, width).transpose(0, 2, 1)
        return np.ascontiguousarray(quantized), scales.reshape(directions, rows), zero_points.reshape(directions, rows)

    return run


def _quantize_weight(graph: WeightlessGraph, name: str) -> None:
    weight = graph.weights[name]
    directions, rows, width = weight.shape
    shared = _Shared(_per_row_int8(weight), 3)
    _add(graph, name + "_quantized", Part(shared, 0, (directions, width, rows), np.int8))
    _add(graph, name + "_scale", Part(shared, 1, (directions, rows), np.float32))
    _add(graph, name + "_zero_point", Part(shared, 2, (directions, rows), np.int8))


def _constant_weights(graph: WeightlessGraph, node) -> bool:
    if node.op_type != "LSTM" or node.domain not in ("", "ai.onnx"):
        return False
    weights = [graph.weights.get(name) for name in node.input[1:3]]
    return all(w is not None and w.dtype == np.float32 and len(w.shape) == 3 for w in weights)


def quantize_lstms(graph: WeightlessGraph) -> int:
    """Rewrite every LSTM with constant fp32 W and R as ``DynamicQuantizeLSTM``; returns how many."""
    from onnx import helper

    nodes, done, count = [], set(), 0
    for node in graph.model.graph.node:
        if not _constant_weights(graph, node):
            nodes.append(node)
            continue
        w, r = node.input[1], node.input[2]
        for name in (w, r):
            if name not in done:
                done.add(name)
                _quantize_weight(graph, name)
        optional = [node.input[i] if len(node.input) > i else "" for i in range(3, 8)]  # B, lens, h0, c0, P
        inputs = [node.input[0], w + "_quantized", r + "_quantized", *optional]
        inputs += [w + "_scale", w + "_zero_point", r + "_scale", r + "_zero_point"]
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name != "layout"}
        name = node.name + "_quant" if node.name else ""
        nodes.append(
            helper.make_node(
                "DynamicQuantizeLSTM", inputs, list(node.output), name, domain="com.microsoft", **attributes
            )
        )
        count += 1
    replace_nodes(graph, nodes, count > 0)
    return count


def audio_snr(reference: np.ndarray, ours: np.ndarray) -> float:
    """SNR in dB, the lower of plain and without each channel's mean: a random-weights decoder outputs a large
    DC offset, which would make the plain SNR ~20 dB easier to pass (as tests/test_streaming.py checks)."""
    dc = reference.mean(axis=-1, keepdims=True)
    return min(snr_db(reference, ours), snr_db(reference - dc, ours - dc))


def audio_snr_db(role: str, path: Path, model, wrapper) -> float:
    """The lowest :func:`audio_snr` of the graph's audio against PyTorch's decode of the same random codes."""
    from .validate import _session
    from .validate_stream import stream_audio_pairs

    session = _session(path)
    if role == "encodec_stream":
        pairs = stream_audio_pairs(session, model, wrapper)
    else:
        import torch

        pairs = []
        for batch, frames in [(1, 3), (2, 50)]:
            (codes,) = wrapper.example_inputs(batch, frames)
            with torch.no_grad():
                reference = model.audio_encoder.decode(codes[None], [None]).audio_values.numpy()
            (audio,) = session.run(None, {"audio_codes": codes.numpy()})
            pairs.append((reference, audio))
    return min(audio_snr(reference, audio) for reference, audio in pairs)


def choose_codec_lstm(codec_lstm: CodecLSTM | str | None, precision: str | PrecisionPlan) -> tuple[CodecLSTM, bool]:
    """(the LSTM format of EnCodec's decoder graphs, whether the caller asked for it rather than the plan)."""
    if codec_lstm is None:
        plan = plan_for(precision)
        return parse_codec_lstm(plan.codec_lstm if plan is not None and plan.codec_lstm else "fp32"), False
    choice = parse_codec_lstm(codec_lstm)
    if choice is CodecLSTM.INT8 and precision == "fp16":
        raise ValueError("codec_lstm='int8' is a CPU format (DynamicQuantizeLSTM); precision='fp16' is for CUDA")
    return choice, True


def int8_codec_graph(role: str, graph: WeightlessGraph, path: Path, model, wrapper, explicit: bool, record: dict):
    """Replace the validated fp32 EnCodec graph at ``path`` by its int8-LSTM form if its audio holds the bound.

    Returns the graph's external data files. ``record`` (the manifest's ``codec_lstm``) gets, per role, the
    format written and the SNR measured, and the bound. Below the bound an ``explicit`` request fails the
    export; a preset's choice keeps the fp32 graph and warns.
    """
    converted = graph.copy()
    if quantize_lstms(converted) == 0:
        return write_model(graph, path, onnx_io.EXTERNAL_DATA_MIN_BYTES)
    external = write_model(converted, path, onnx_io.EXTERNAL_DATA_MIN_BYTES)
    del converted
    snr = audio_snr_db(role, path, model, wrapper)
    record.setdefault("snr_db", {})[role] = round(snr, 1)
    record["min_snr_db"] = MIN_SNR_DB
    if snr >= MIN_SNR_DB:
        logger.info("%-15s int8 LSTM weights: audio %.1f dB SNR against PyTorch (bound %.0f dB)", role, snr, MIN_SNR_DB)
        record.setdefault("graphs", {})[role] = CodecLSTM.INT8.value
        return external
    message = (
        f"{role}: with int8 LSTM weights the audio is {snr:.1f} dB SNR against PyTorch, below the "
        f"{MIN_SNR_DB:.0f} dB bound"
    )
    if explicit:
        from .validate import ValidationError

        raise ValidationError(f"{message}; export with codec_lstm='fp32' (--codec-lstm fp32)")
    logger.warning("%s; this graph keeps fp32 LSTM weights", message)
    record.setdefault("graphs", {})[role] = CodecLSTM.FP32.value
    for name in external:
        (path.parent / name).unlink(missing_ok=True)
    return write_model(graph, path, onnx_io.EXTERNAL_DATA_MIN_BYTES)
