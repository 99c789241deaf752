"""Export-time weight precision passes: int8 (and 4-bit) weights for CPU, fp16 for GPU.

fp32 at decoder batch 2 is memory-bound on CPU (~1.4 GB of weights read per step, docs/design.md §8):
fewer weight bytes is the only way down. Every variant is produced from the validated fp32 graph.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .onnx_io import load_onnx, save_onnx
from .precision_plan import PLANS, PrecisionPlan

logger = logging.getLogger("musicgen_onnx")

#: precision -> the graphs it changes (others stay fp32: the T5 encoder overflows in fp16, and the
#: cross K/V and EnCodec graphs run once per clip). Every MatMul plan (int8, int4 and the mixed presets of
#: ``precision_plan.PLANS``) changes the decoder only.
PRECISIONS = {
    "fp32": (),
    **{name: ("decoder",) for name in PLANS},
    "fp16": ("decoder", "cross_kv"),
}


def check_precision(precision: str | PrecisionPlan) -> None:
    if isinstance(precision, PrecisionPlan):
        return
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {tuple(PRECISIONS)}, got {precision!r}")


def roles_changed(precision: str | PrecisionPlan) -> tuple[str, ...]:
    """The graphs a precision converts (a ``PrecisionPlan`` object: the decoder, like a named plan)."""
    return ("decoder",) if isinstance(precision, PrecisionPlan) else PRECISIONS[precision]


def precision_name(precision: str | PrecisionPlan) -> str:
    """What the manifest records as ``precision``."""
    return precision.name if isinstance(precision, PrecisionPlan) else precision


def quantize_int8(path: Path) -> None:
    """Dynamic int8 quantization of every MatMul weight (signed int8: the VNNI u8 x s8 kernels)."""
    import shutil
    import tempfile

    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(dir=path.parent) as work:
        out = Path(work) / path.name
        quantize_dynamic(
            load_onnx(path),
            str(out),
            op_types_to_quantize=["MatMul"],
            weight_type=QuantType.QInt8,
            per_channel=False,
            use_external_data_format=True,
            extra_options={"MatMulConstBOnly": True},
        )
        save_onnx(load_onnx(out), path)
        shutil.rmtree(work, ignore_errors=True)


def quantize_int4(path: Path, block_size: int = 128, bits: int = 4, accuracy_level: int = 4) -> None:
    """Block-wise weights (MatMulNBits), 4 or 8 bits.

    ``accuracy_level`` 4 (int8 activations on CPU) is what the exporter writes; the others exist for
    ``benchmarks/matmul_formats.py``, which shows why (levels 0 and 1 compute in fp32, 5-10x slower at 2 rows)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    config = DefaultWeightOnlyQuantConfig(
        block_size=block_size, is_symmetric=True, accuracy_level=accuracy_level, bits=bits
    )
    quantizer = MatMulNBitsQuantizer(load_onnx(path), algo_config=config)
    quantizer.process()
    save_onnx(quantizer.model.model, path)


def quantize_int8_blocks(path: Path) -> None:
    """8-bit block-wise weights, blocks of 256 (MatMulNBits bits 8)."""
    quantize_int4(path, block_size=256, bits=8)


def convert_fp16(path: Path, keep_inputs: tuple[str, ...] = ()) -> None:
    """fp16 weights, activations and float I/O, for the CUDA execution provider.

    The KV cache and cross K/V stay fp16 end to end (a cast at the graph boundary would break the
    in-place cache buffers); ``keep_inputs`` stay fp32 (the T5 output feeding the cross K/V graph).
    Large negative mask constants are clamped to the fp16 range by the converter.
    """
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(load_onnx(path), keep_io_types=list(keep_inputs) if keep_inputs else False)
    save_onnx(model, path)


def apply_precision(role: str, path: Path, precision: str) -> bool:
    """Convert one exported fp32 graph in place; returns whether it changed.

    Loads the whole graph: the exporter converts per tensor instead (``lazy_precision``), with the same
    result; this is the reference the tests compare that against.
    """
    if role not in PRECISIONS[precision]:
        return False
    if precision == "fp16":
        convert_fp16(path, ("encoder_hidden_states",) if role == "cross_kv" else ())
    else:
        {"int8": quantize_int8, "int4": quantize_int4, "int8-blocks": quantize_int8_blocks}[precision](path)
    logger.info("%-15s converted to %s", role, precision)
    return True
