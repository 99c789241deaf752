"""Per-module weight formats for the decoder's MatMuls: a precision plan (docs/design.md §8).

int4 everywhere (MatMulNBits, block 128) is the fastest CPU decoder but drifts from fp32 by a mean KL of
~0.05 nats per step; int8 everywhere stays within ~0.001 but reads twice the bytes. A plan picks a format per
module (self-attention, cross-attention, FFN, lm heads) and per layer position (the first / last N layers), so
a preset can keep the sensitive parts at int8 and the bulk at int4. Every MatMul weight is classified by the
checkpoint parameter names it is made of (``FromTensor.name``: ``layers.3.fc1.weight``, ``lm_heads.0.weight``),
never by ONNX node names, which the tracer numbers arbitrarily.

Named plans (``PLANS``) are what ``musicgen-onnx export --precision NAME`` accepts; the manifest records the
plan (``Manifest.precision_plan``), so a model directory says which format each module got.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class WeightFormat(Enum):
    """How one MatMul's constant weight is stored and multiplied."""

    FP32 = "fp32"  #: as traced
    INT8 = "int8"  #: dynamic QInt8, per-tensor symmetric (DynamicQuantizeLinear -> MatMulInteger)
    INT4 = "int4"  #: com.microsoft MatMulNBits, symmetric blocks along K, int8 activations (accuracy level 4)
    #: com.microsoft MatMulNBits with 8-bit weights: symmetric blocks along K, int8 activations quantized per
    #: block (accuracy level 4). The same bytes as INT8 but a scale per block instead of per tensor, and on
    #: AVX-512 VNNI onnxruntime's block kernel (block 256) runs a two-row step 1.2x faster (design §8).
    INT8_BLOCKS = "int8-blocks"


#: block sizes MatMulNBits accepts (a power of two, >= 16; onnxruntime's quantizer stops at 256)
BLOCK_SIZES = (16, 32, 64, 128, 256)
INT4_BLOCK_SIZES = BLOCK_SIZES

#: weight bits of the block formats (MatMulNBits ``bits``)
BLOCK_BITS = {WeightFormat.INT4: 4, WeightFormat.INT8_BLOCKS: 8}


@dataclass(frozen=True)
class MatMulFormat:
    """A weight format; ``block_size`` (weights per fp32 scale along K) applies to the block formats only."""

    weights: WeightFormat
    block_size: int = 128

    def __post_init__(self) -> None:
        if self.weights in BLOCK_BITS and self.block_size not in BLOCK_SIZES:
            name = "int4" if self.weights is WeightFormat.INT4 else "int8 block"
            raise ValueError(f"{name} block_size must be one of {BLOCK_SIZES}, got {self.block_size}")

    @property
    def bits(self) -> int | None:
        """MatMulNBits weight bits, None for the formats that are not MatMulNBits."""
        return BLOCK_BITS.get(self.weights)

    @property
    def label(self) -> str:
        if self.bits is not None:
            return f"int{self.bits}/b{self.block_size}"
        return self.weights.value


FP32 = MatMulFormat(WeightFormat.FP32)
INT8 = MatMulFormat(WeightFormat.INT8)
INT4_B128 = MatMulFormat(WeightFormat.INT4, 128)
INT4_B32 = MatMulFormat(WeightFormat.INT4, 32)
INT4_B256 = MatMulFormat(WeightFormat.INT4, 256)
INT8_B256 = MatMulFormat(WeightFormat.INT8_BLOCKS, 256)


class Module(Enum):
    """What a decoder MatMul weight belongs to."""

    SELF_ATTENTION = "self_attention"  #: fused q/k/v projection and out_proj
    CROSS_ATTENTION = "cross_attention"  #: q_proj and out_proj (its K/V are in the cross_kv graph)
    FFN = "ffn"  #: fc1, fc2
    LM_HEAD = "lm_head"  #: the fused per-codebook heads
    OTHER = "other"  #: anything else (gets the plan's default)


_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.(self_attn|encoder_attn|fc1|fc2)\.")
_LM_HEAD = re.compile(r"(?:^|\.)lm_heads\.\d+\.")
_MODULES = {"self_attn": Module.SELF_ATTENTION, "encoder_attn": Module.CROSS_ATTENTION}


def classify(sources: Iterable[str]) -> tuple[Module, int | None]:
    """(module, layer index or None) of a weight made of the parameters named ``sources``.

    A fused weight (q/k/v, the lm heads) is made of several parameters of one module; parameters of two
    different modules in one weight are OTHER.
    """
    found: set[tuple[Module, int | None]] = set()
    for name in sources:
        match = _LAYER.search(name)
        if match:
            found.add((_MODULES.get(match.group(2), Module.FFN), int(match.group(1))))
        elif _LM_HEAD.search(name):
            found.add((Module.LM_HEAD, None))
        else:
            found.add((Module.OTHER, None))
    return found.pop() if len(found) == 1 else (Module.OTHER, None)


@dataclass(frozen=True)
class Rule:
    """Use ``format`` for the MatMuls of ``modules`` in the layers selected, by default every layer.

    ``edge_layers`` N: only the first and last N layers. ``layers`` (start, stop): layers start <= i < stop,
    negative values counting from the end as in a Python slice ((-8, 24) or (16, 24): the last 8 of 24).
    The lm heads belong to no layer: a rule that selects layers never matches them.
    """

    format: MatMulFormat
    modules: frozenset[Module] = frozenset(Module)
    edge_layers: int | None = None
    layers: tuple[int | None, int | None] | None = None

    def __post_init__(self) -> None:
        if self.edge_layers is not None and self.layers is not None:
            raise ValueError("a rule selects layers by edge_layers or by layers, not both")

    def matches(self, module: Module, layer: int | None, num_layers: int) -> bool:
        if module not in self.modules:
            return False
        if self.edge_layers is None and self.layers is None:
            return True
        if layer is None:
            return False
        if self.edge_layers is not None:
            return layer < self.edge_layers or layer >= num_layers - self.edge_layers
        return layer in range(num_layers)[slice(*self.layers)]

    def describe(self) -> str:
        modules = "all" if self.modules == frozenset(Module) else "+".join(sorted(m.value for m in self.modules))
        where = ""
        if self.edge_layers is not None:
            where = f" in the first/last {self.edge_layers} layers"
        elif self.layers is not None:
            start, stop = self.layers
            last = start is not None and start < 0 and stop is None
            where = f" in the last {-start} layers" if last else f" in layers [{start}, {stop})"
        return f"{modules}{where}: {self.format.label}"


@dataclass(frozen=True)
class PrecisionPlan:
    """A named choice of weight format per decoder MatMul: the first matching rule wins, else ``default``."""

    name: str
    default: MatMulFormat
    rules: tuple[Rule, ...] = field(default_factory=tuple)
    summary: str = ""
    #: the KV cache (manifest ``decoder.kv_cache`` value) the plan's quality was measured with; the CLI exports
    #: it unless ``--kv-cache`` says otherwise. None: the static fp32 cache.
    kv_cache: str | None = None
    #: the LSTM weights of EnCodec's decoder graphs (``export.codec_lstm``; the CLI's ``--codec-lstm`` overrides);
    #: None: fp32
    codec_lstm: str | None = None

    def format_for(self, module: Module, layer: int | None, num_layers: int) -> MatMulFormat:
        for rule in self.rules:
            if rule.matches(module, layer, num_layers):
                return rule.format
        return self.default

    def to_record(self, counts: dict[str, int] | None = None) -> dict[str, Any]:
        """The manifest's ``precision_plan``: the rules as text and how many MatMuls got each format."""
        record: dict[str, Any] = {
            "name": self.name,
            "default": self.default.label,
            "rules": [rule.describe() for rule in self.rules],
            "summary": self.summary,
        }
        if counts is not None:
            record["matmuls"] = dict(sorted(counts.items()))
        return record


def _except(modules: Iterable[Module]) -> frozenset[Module]:
    return frozenset(Module) - frozenset(modules)


def _cpu_preset(name: str, eight_bit: MatMulFormat, what: str, suffix: str = "") -> PrecisionPlan:
    """The CPU presets' shared mix: ``eight_bit`` everywhere except int4 (block 128) FFN in the last 10 layers.

    With the int8 KV cache and int8 LSTM weights in EnCodec's decoder (16 % of its decode time, ~74 dB SNR:
    docs/design.md §8), each the fastest choice within its quality bound.
    """
    return PrecisionPlan(
        name,
        eight_bit,
        (Rule(INT4_B128, frozenset({Module.FFN}), layers=(-10, None)),),
        summary=f"{what}, int4 (block 128) FFN in the last 10 layers, int8 KV cache, int8 EnCodec LSTM{suffix}",
        kv_cache="static-int8",
        codec_lstm="int8",
    )


#: the decoder's MatMul plans by ``--precision`` name (fp32 and fp16 are whole-graph choices, precision.py)
PLANS: dict[str, PrecisionPlan] = {
    "int8": PrecisionPlan("int8", INT8, summary="every decoder MatMul int8"),
    "int4": PrecisionPlan("int4", INT4_B128, summary="every decoder MatMul int4, block 128"),
    "int8-blocks": PrecisionPlan(
        "int8-blocks", INT8_B256, summary="every decoder MatMul 8-bit, a scale per 256 weights (MatMulNBits)"
    ),
    # The fastest mix measured within mean KL 0.01 per codebook of fp32 (benchmarks/precision_search.py, design
    # §8): int4 error costs far more in the first layers than in the last, and FFN weights less per byte than
    # attention, so the FFN of the last 10 of 24 layers is int4 and the rest (lm heads included) int8, with the
    # int8 KV cache. The 8-bit MatMuls are per-tensor int8 because that is the format that is fast on every x86
    # CPU we measured: on AVX2-only CPUs onnxruntime's 8-bit block kernel runs 1.45x slower at one prompt
    # (benchmarks/matmul_formats.py), while on AVX-512 VNNI the block variant (cpu-fast-vnni) saves only ~3 %.
    "cpu-fast": _cpu_preset("cpu-fast", INT8, "int8 decoder"),
    # cpu-fast with 8-bit MatMulNBits blocks of 256 for the 8-bit MatMuls: 2 % more bytes and lower drift, and
    # the fastest preset on CPUs with AVX-512 VNNI / AVX-VNNI (9.64 vs 9.95 s for a 10 s clip); slower than
    # cpu-fast without them (the runtime warns at load there, runtime/cpus.py).
    "cpu-fast-vnni": _cpu_preset("cpu-fast-vnni", INT8_B256, "8-bit block decoder", " (VNNI CPUs)"),
}


def plan_for(precision: str | PrecisionPlan) -> PrecisionPlan | None:
    """The MatMul plan of a precision name (None for fp32 / fp16), or the plan itself."""
    if isinstance(precision, PrecisionPlan):
        return precision
    return PLANS.get(precision)
