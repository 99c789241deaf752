"""``musicgen-onnx export``: checkpoint (hub id or local dir) or --random-weights NAME -> export dir."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from musicgen_onnx.runtime.manifest import KVCache

from .precision_plan import PLANS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="musicgen-onnx export",
        description="Export a MusicGen checkpoint to validated ONNX graphs plus manifest.json.",
        epilog=(
            "examples:\n"
            "  musicgen-onnx export facebook/musicgen-stereo-small out/stereo-small\n"
            "  musicgen-onnx export ./my-checkpoint out/mine\n"
            "  musicgen-onnx export --random-weights facebook/musicgen-stereo-small out/rw  # no download"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("paths", nargs="+", metavar="[SOURCE] OUTPUT_DIR", help="checkpoint and output dir")
    parser.add_argument(
        "--random-weights",
        metavar="NAME",
        help="build the real architecture of a released checkpoint with random weights (no download)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for --random-weights (default 0)")
    parser.add_argument("--revision", help="hub revision (branch, tag or commit)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty OUTPUT_DIR")
    parser.add_argument(
        "--no-audio-encoder",
        action="store_true",
        help="skip the EnCodec encoder (only needed for audio prompts)",
    )
    parser.add_argument(
        "--precision",
        choices=("fp32", *PLANS, "fp16"),
        default="fp32",
        help="decoder weights: fp32 (default); int8 (per tensor), int8-blocks (8-bit, a scale per 256 weights), "
        "int4; cpu-fast: the recommended CPU preset (int8, int4 FFN in the last 10 layers, int8 KV cache; "
        "docs/design.md §8); cpu-fast-vnni: the same with 8-bit blocks, faster on AVX-512 VNNI / AVX-VNNI CPUs; "
        "fp16 (CUDA); recorded in the manifest",
    )
    parser.add_argument(
        "--kv-cache",
        choices=[cache.value for cache in KVCache],
        default=None,
        help="static: preallocated in-place cache (default; a CPU preset names its own, e.g. cpu-fast: static-int8); "
        "static-int8: the same in int8 with calibrated "
        "per-channel scales (CPU: a quarter of the bytes attention reads); concat: growing past/present tensors",
    )
    parser.add_argument(
        "--codec-lstm",
        choices=("fp32", "int8"),
        default=None,
        help="LSTM weights of EnCodec's decoder graphs: fp32 (default), or int8 (~16 %% faster decode; the audio must "
        "stay >= 40 dB SNR against PyTorch or the export fails); the CPU presets choose int8 and keep fp32 for a "
        "checkpoint whose audio misses the bound",
    )
    parser.add_argument("--no-validate", action="store_true", help="skip the parity check against PyTorch")
    parser.add_argument("-v", "--verbose", action="store_true", help="log validation details")
    return parser


def _default_kv_cache(precision: str) -> str:
    """The cache a preset was measured with (``PrecisionPlan.kv_cache``), else the static fp32 cache."""
    plan = PLANS.get(precision)
    return plan.kv_cache if plan is not None and plan.kv_cache else KVCache.STATIC.value


def _missing_export_deps() -> list[str]:
    import importlib.util

    return [name for name in ("torch", "transformers", "onnx") if importlib.util.find_spec(name) is None]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    missing = _missing_export_deps()
    if missing:
        print(
            f"musicgen-onnx export needs {', '.join(missing)}:\n"
            '  pip install torch==2.13.0 && pip install "musicgen-onnx[export]"',
            file=sys.stderr,
        )
        return 2
    if args.random_weights:
        if len(args.paths) != 1:
            parser.error("with --random-weights give only OUTPUT_DIR")
        source, output = None, args.paths[0]
    else:
        if len(args.paths) != 2:
            parser.error("give SOURCE (hub id or checkpoint dir) and OUTPUT_DIR, or --random-weights NAME OUTPUT_DIR")
        source, output = args.paths
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s", stream=sys.stderr)
    for noisy in ("torch", "onnx", "transformers", "urllib3", "filelock", "httpx"):
        logging.getLogger(noisy).setLevel(logging.ERROR)

    from . import export_model
    from .memory import PeakMemory, max_rss_bytes
    from .validate import ValidationError

    started = time.perf_counter()
    try:
        with PeakMemory() as memory:
            manifest = export_model(
                source,
                output,
                random_weights=args.random_weights,
                seed=args.seed,
                overwrite=args.overwrite,
                include_audio_encoder=not args.no_audio_encoder,
                validate=not args.no_validate,
                revision=args.revision,
                precision=args.precision,
                kv_cache=args.kv_cache or _default_kv_cache(args.precision),
                codec_lstm=args.codec_lstm,
            )
    except (FileNotFoundError, FileExistsError, ValidationError, ValueError) as exc:  # CheckpointError is a ValueError
        print(f"musicgen-onnx export: error: {exc}", file=sys.stderr)
        return 2
    total = sum(p.stat().st_size for p in Path(output).iterdir() if p.is_file()) / 1e6
    anon = f"{memory.peak_anon / 1e9:.2f} GB" if memory.peak_anon is not None else "n/a"
    print(
        f"exported {manifest.source}{' (random weights)' if manifest.random_weights else ''} to {output}: "
        f"{len(manifest.graphs)} graphs, {total:.1f} MB, {time.perf_counter() - started:.1f} s, "
        f"peak anonymous RSS {anon}, max RSS {max_rss_bytes() / 1e9:.2f} GB (mapped weight files included)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
