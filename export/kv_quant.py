"""int8 KV cache for the static-cache decoder: calibrate per-channel scales, then let GroupQueryAttention keep the
cache in int8 (docs/design.md §6).

onnxruntime's CPU GroupQueryAttention takes an int8 ``past_key``/``past_value`` with ``k_scale``/``v_scale`` inputs
(``kv_cache_bit_width=8``, ``k_quant_type``/``v_quant_type`` ``PER_CHANNEL``: one scale per head and channel,
shape [1, heads, 1, head_dim]). It stores each new row as ``clip(round(x / scale), -128, 127)`` and attends over
``q * scale``, reading a quarter of the fp32 cache's bytes. The scales are static, so they are calibrated here:
the validated fp32 decoder runs a prefill over real text conditioning and delay-pattern token columns, and each
channel's scale is its largest |K| (|V|) over every row and position, times a margin for what calibration did not
see (values beyond it saturate).

The conversion is a rewrite of the traced fp32 graph, after the fp32 graph has been validated against
transformers: past/present become int8, every GroupQueryAttention node gets the quantization attributes and the
two scale initializers ``kv_scale.key.i`` / ``kv_scale.value.i``. Nothing else in the graph reads the cache.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .lazy_weights import Constant
from .weightless import WeightlessGraph, _placeholder

logger = logging.getLogger("musicgen_onnx")

#: onnxruntime's name for one scale per (head, channel), broadcast over batch and positions.
QUANT_TYPE = "PER_CHANNEL"
INT8_MAX = 127.0
#: the calibrated max |K|, |V| per channel is widened by this before it maps to 127: the prefill sees only
#: CALIBRATION_POSITIONS positions of two prompts, and a value beyond the range saturates.
CALIBRATION_MARGIN = 1.25
CALIBRATION_POSITIONS = 192
CALIBRATION_PROMPTS = (
    "80s pop track with bassy drums and synth",
    "a slow acoustic guitar ballad with soft piano and strings in the background",
)
#: the probe that checks the converted graph: a prefill of this many columns, then this many single steps
PROBE_PREFILL, PROBE_STEPS = 16, 4
#: a scale never goes below this (a channel that calibration saw only as 0 still gets a usable range)
MIN_SCALE = 1e-6


@dataclass(frozen=True)
class KVScales:
    """Per layer, the dequantization scale of every (head, channel) of K and of V: [1, heads, 1, head_dim]."""

    key: list[np.ndarray]
    value: list[np.ndarray]

    @classmethod
    def from_max_abs(cls, key_max: list[np.ndarray], value_max: list[np.ndarray], margin: float) -> KVScales:
        def scale(m: np.ndarray) -> np.ndarray:
            return np.maximum(m * margin / INT8_MAX, MIN_SCALE).astype(np.float32)

        return cls([scale(m) for m in key_max], [scale(m) for m in value_max])


def scale_names(layer: int) -> tuple[str, str]:
    return f"kv_scale.key.{layer}", f"kv_scale.value.{layer}"


# ---- calibration ------------------------------------------------------------------------------------------
@dataclass
class Calibration:
    """The scales, and a probe to check the converted graph with: token columns, text conditioning, the prefill
    length, and the fp32 graph's logits for the prefill and each single-token step after it."""

    scales: KVScales
    ids: np.ndarray
    cross: list[np.ndarray]
    mask: np.ndarray
    prefill: int
    reference: list[np.ndarray]


def calibration_text(model, tokenizer, prompts: tuple[str, ...] = CALIBRATION_PROMPTS) -> tuple[list, np.ndarray]:
    """Cross K/V ([rows, heads, T, head_dim] per layer) and text mask [rows, T] for ``prompts`` with CFG: row
    2p is prompt p, row 2p + 1 its unconditional twin (mask all zero), as the runtime feeds them."""
    import torch
    from musicgen_onnx.graphs import CrossKV, TextEncoder

    encoded = [tokenizer.encode(p).ids for p in prompts]
    width = max(len(ids) for ids in encoded)
    ids = torch.zeros(2 * len(prompts), width, dtype=torch.long)
    mask = torch.zeros(2 * len(prompts), width, dtype=torch.long)
    for p, row in enumerate(encoded):
        ids[2 * p, : len(row)] = torch.tensor(row)
        mask[2 * p, : len(row)] = 1
    with torch.no_grad():
        hidden = TextEncoder(model).eval()(ids, mask)
        cross = CrossKV(model).eval()(hidden)
    return [c.numpy() for c in cross], mask.numpy()


def calibration_ids(rows: int, codebooks: int, length: int, pad: int, rng: np.random.Generator) -> np.ndarray:
    """Token columns shaped like generation's: random codes, the pad token where the delay pattern puts it
    (codebook k is empty for its first k + 1 columns, column 0 is the start token)."""
    ids = rng.integers(0, pad, (rows, codebooks, length), dtype=np.int64)
    for k in range(codebooks):
        ids[:, k, : k + 1] = pad
    return ids


def _session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.add_session_config_entry("session.disable_prepacking", "1")  # as export.validate: no weight copies
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def calibrate(decoder_path: Path, model, tokenizer, positions: int = CALIBRATION_POSITIONS,
              margin: float = CALIBRATION_MARGIN, seed: int = 0) -> Calibration:  # fmt: skip
    """Per-channel scales from the fp32 static-cache decoder at ``decoder_path`` (see the module docstring)."""
    started = time.perf_counter()
    session = _session(decoder_path)
    config = model.decoder.config
    codebooks, pad = int(config.num_codebooks), int(config.pad_token_id)
    length = min(positions, int(config.max_position_embeddings))
    cross, mask = calibration_text(model, tokenizer)
    rows = cross[0].shape[0]
    rng = np.random.default_rng(seed)
    presents = _run(session, calibration_ids(rows, codebooks, length, pad, rng), cross, mask, [(0, length)])[1]
    key_max = [np.abs(p).max(axis=(0, 2), keepdims=True) for p in presents[0::2]]
    value_max = [np.abs(p).max(axis=(0, 2), keepdims=True) for p in presents[1::2]]
    scales = KVScales.from_max_abs(key_max, value_max, margin)
    probe = calibration_ids(rows, codebooks, PROBE_PREFILL + PROBE_STEPS, pad, rng)
    reference = _run(session, probe, cross, mask, _probe_calls(probe.shape[2]))[0]
    logger.info(
        "KV cache int8 scales calibrated on %d rows x %d positions in %.1f s (max |K| %.3g, max |V| %.3g)",
        rows, length, time.perf_counter() - started, max(float(m.max()) for m in key_max),
        max(float(m.max()) for m in value_max),
    )  # fmt: skip
    return Calibration(scales, probe, cross, mask, PROBE_PREFILL, reference)


def _probe_calls(length: int) -> list[tuple[int, int]]:
    return [(0, PROBE_PREFILL)] + [(p, p + 1) for p in range(PROBE_PREFILL, length)]


def _run(session, ids: np.ndarray, cross: list, mask: np.ndarray, calls: list[tuple[int, int]]):
    """Feed columns [start, stop) of ``ids`` call by call with the cache bound in place (as the runtime does);
    returns the logits of every call and the final cache buffers."""
    import onnxruntime as ort

    inputs = {i.name: i.type for i in session.get_inputs()}
    names = list(inputs)
    n = len(cross) // 2
    rows, _, length = ids.shape
    heads, head_dim = cross[0].shape[1], cross[0].shape[3]
    past_names = names[4 + 2 * n :]
    dtype = np.int8 if inputs[past_names[0]] == "tensor(int8)" else np.float32
    cache = [np.zeros((rows, heads, length, head_dim), dtype) for _ in past_names]
    values = [ort.OrtValue.ortvalue_from_numpy(c) for c in cache]
    logits = []
    for start, stop in calls:
        binding = session.io_binding()
        binding.bind_cpu_input("input_ids", np.ascontiguousarray(ids[:, :, start:stop]))
        binding.bind_cpu_input("encoder_attention_mask", mask)
        binding.bind_cpu_input("position_ids", np.tile(np.arange(start, stop, dtype=np.int64), (rows, 1)))
        binding.bind_cpu_input("total_sequence_length", np.array(stop, np.int32))
        for name, value in zip(names[4 : 4 + 2 * n], cross, strict=True):
            binding.bind_cpu_input(name, value)
        for past, value in zip(past_names, values, strict=True):
            binding.bind_ortvalue_input(past, value)
            binding.bind_ortvalue_output("present" + past[len("past") :], value)
        binding.bind_output("logits")
        session.run_with_iobinding(binding)
        logits.append(binding.get_outputs()[-1].numpy())  # outputs come in binding order: logits last
    return logits, cache


# ---- graph rewrite ----------------------------------------------------------------------------------------
def quantize_cache(graph: WeightlessGraph, scales: KVScales) -> None:
    """Make every GroupQueryAttention of ``graph`` keep an int8 cache with ``scales`` (in place)."""
    from onnx import TensorProto, helper

    g = graph.model.graph
    cache_names: dict[str, int] = {}
    for i in range(len(scales.key)):
        cache_names.update({f"past_key.{i}": i, f"past_value.{i}": i, f"present_key.{i}": i, f"present_value.{i}": i})
    found = 0
    for node in g.node:
        readers = [name for name in node.input if name in cache_names]
        if node.op_type != "GroupQueryAttention":
            if readers:
                raise ValueError(f"{node.op_type} node {node.name!r} reads the KV cache {readers[0]}: cannot quantize")
            continue
        layer = cache_names[node.input[3]]
        if node.input[3] != f"past_key.{layer}" or node.input[4] != f"past_value.{layer}":
            raise ValueError(f"GroupQueryAttention {node.name!r} does not read layer {layer}'s past key and value")
        key_scale, value_scale = scale_names(layer)
        inputs = list(node.input) + [""] * (12 - len(node.input))  # cos/sin cache, position_ids, bias, head_sink
        del node.input[:]
        node.input.extend([*inputs[:12], key_scale, value_scale])
        node.attribute.extend(
            [
                helper.make_attribute("k_quant_type", QUANT_TYPE),
                helper.make_attribute("v_quant_type", QUANT_TYPE),
                helper.make_attribute("kv_cache_bit_width", 8),
            ]
        )
        for name, value in ((key_scale, scales.key[layer]), (value_scale, scales.value[layer])):
            lazy = Constant(value)
            g.initializer.append(_placeholder(name, lazy))
            graph.weights[name] = lazy
        found += 1
    if found != len(scales.key):
        raise ValueError(f"found {found} GroupQueryAttention nodes for {len(scales.key)} layers of scales")
    for value_info in list(g.input) + list(g.output):
        if value_info.name in cache_names:
            value_info.type.tensor_type.elem_type = TensorProto.INT8


# ---- check ------------------------------------------------------------------------------------------------
def check_quantized(path: Path, calibration: Calibration) -> float:
    """Run the converted decoder at ``path`` on the calibration probe (a prefill, then single-token steps) and
    return its largest logits difference from the fp32 graph's, relative to max(1, max |fp32 logits|); raise
    if an output is not finite. The difference includes any weight quantization of the same export."""
    from .validate import ValidationError

    c = calibration
    logits = _run(_session(path), c.ids, c.cross, c.mask, _probe_calls(c.ids.shape[2]))[0]
    if not all(np.isfinite(x).all() for x in logits):
        raise ValidationError("decoder: the int8 KV cache graph produces NaN or inf")
    pairs = zip(logits, c.reference, strict=True)
    return max(float(np.abs(a - b).max()) / max(1.0, float(np.abs(b).max())) for a, b in pairs)
