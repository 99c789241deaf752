"""Which mixed precision plan is the fastest that keeps mean KL <= 0.01 per codebook vs fp32 (docs/design.md §8)?

For each candidate plan: a full-size random-weights export with that plan (the decoder's fp32 graphs are the
same as the reference's, so it is not re-validated), the quality gate against the fp32 export
(``precision_quality.compare``) and the decoder's ms/step (``step_time.py``'s measurement: one prompt with CFG,
sampling, median of the steps after an 8-step warm-up), side by side:

    flock /tmp/musicgen-heavy.lock python benchmarks/precision_search.py FP32_DIR WORK_DIR \\
        --candidates int4 int4-b32 int4-lm8 [--kv-cache static-int8] [--steps 150] [--json OUT]

Each candidate's record is appended to ``--json`` as it finishes, so a search can run in several lock holds.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

from musicgen_onnx.export.precision_plan import (
    INT4_B32,
    INT4_B128,
    INT4_B256,
    INT8,
    INT8_B256,
    PLANS,
    Module,
    PrecisionPlan,
    Rule,
)
from precision_quality import compare

LM = frozenset({Module.LM_HEAD})
ATTENTION = frozenset({Module.SELF_ATTENTION, Module.CROSS_ATTENTION})
FFN = frozenset({Module.FFN})

#: the plans the search measured (docs/design.md §8 has the table); the kept one is in precision_plan.PLANS
CANDIDATES: dict[str, PrecisionPlan] = {
    "int8": PLANS["int8"],
    "cpu-fast": PLANS["cpu-fast"],
    "cpu-fast-vnni": PLANS["cpu-fast-vnni"],
    "int4": PLANS["int4"],
    "int4-b32": PrecisionPlan("int4-b32", INT4_B32),
    "int4-lm8": PrecisionPlan("int4-lm8", INT4_B128, (Rule(INT8, LM),)),
    "int4-b32-lm8": PrecisionPlan("int4-b32-lm8", INT4_B32, (Rule(INT8, LM),)),
    "int4-b32-lm8-edge2": PrecisionPlan("int4-b32-lm8-edge2", INT4_B32, (Rule(INT8, LM), Rule(INT8, edge_layers=2))),
    "int4-lm8-edge2": PrecisionPlan("int4-lm8-edge2", INT4_B128, (Rule(INT8, LM), Rule(INT8, edge_layers=2))),
    "int4-ffn-only": PrecisionPlan("int4-ffn-only", INT8, (Rule(INT4_B128, FFN),)),
    "int4-b32-ffn-only": PrecisionPlan("int4-b32-ffn-only", INT8, (Rule(INT4_B32, FFN),)),
    "int4-attn-only": PrecisionPlan("int4-attn-only", INT8, (Rule(INT4_B128, ATTENTION),)),
    # depth: int4 FFN in 8 of the 24 layers, the rest int8
    **{
        f"int4-ffn-{where}8": PrecisionPlan(f"int4-ffn-{where}8", INT8, (Rule(INT4_B128, FFN, layers=span),))
        for where, span in (("first", (0, 8)), ("mid", (8, 16)), ("last", (16, 24)))
    },
    # 8-bit block weights (MatMulNBits bits 8, block 256): the int8 bytes with a faster two-row kernel on VNNI CPUs
    "int8-b256": PrecisionPlan("int8-b256", INT8_B256),
    **{
        f"b256-ffn{n}-int4b{block}": PrecisionPlan(
            f"b256-ffn{n}-int4b{block}", INT8_B256, (Rule(fmt, FFN, layers=(-n, None)),)
        )
        for n in (10, 12, 14, 16)
        for block, fmt in ((128, INT4_B128), (256, INT4_B256))
    },
    # the name the second pass's search (results/precision-search-int8-blocks.json) gave cpu-fast's plan, which
    # was then the first cpu-fast and is cpu-fast again since 2026-12-05: kept so that its command reruns
    "int8-ffn10-int4b128": replace(PLANS["cpu-fast"], name="int8-ffn10-int4b128"),
}


def step_ms(export_dir: Path, threads: int, steps: int = 60) -> float:
    """Median decoder ms/step, one prompt with CFG (as benchmarks/step_time.py measures it)."""
    from musicgen_onnx.runtime import MusicGen

    with MusicGen.load(export_dir, provider="cpu", threads=threads) as model:
        text = "80s synthwave with a driving bassline"
        model.generate_detailed(text, max_new_tokens=8, seed=0)
        result = model.generate_detailed(text, max_new_tokens=steps, seed=1)
    return statistics.median(1000 * t for t in result.step_times[1:])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("reference", type=Path, help="the fp32 random-weights export")
    p.add_argument("work", type=Path, help="where the candidates' exports go (replaced)")
    p.add_argument("--candidates", nargs="+", choices=tuple(CANDIDATES), required=True)
    p.add_argument("--model", default="facebook/musicgen-stereo-small")
    p.add_argument("--steps", type=int, default=150, help="teacher-forced steps per prompt")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--kv-cache", default="static", help="every candidate's cache (static-int8: the int8 KV cache)")
    p.add_argument("--keep", action="store_true", help="keep each candidate's export (default: delete it)")
    p.add_argument("--json", type=Path, help="append the records to this JSON list")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)

    from musicgen_onnx.export import export_model
    from musicgen_onnx.runtime import MusicGen

    ref = MusicGen.load(args.reference, provider="cpu", threads=args.threads)
    records = json.loads(args.json.read_text()) if args.json and args.json.exists() else []
    for name in args.candidates:
        plan = CANDIDATES[name]
        if args.kv_cache != "static":
            name = f"{name}+{args.kv_cache}"
        out = args.work / name
        t0 = time.perf_counter()
        export_model(
            None, out, random_weights=args.model, overwrite=True, validate=False, precision=plan, kv_cache=args.kv_cache
        )
        export_s = time.perf_counter() - t0
        with MusicGen.load(out, provider="cpu", threads=args.threads) as var:
            quality = compare(ref, var, steps=args.steps, name=name)
        record = {**asdict(quality), "step_ms": round(step_ms(out, args.threads), 2), "export_s": round(export_s, 1)}
        record["decoder_mb"] = round(sum(f.stat().st_size for f in out.glob("decoder.onnx*")) / 1e6, 1)
        with open("/proc/loadavg") as handle:
            record["loadavg"] = handle.read().split()[:3]
        print(
            f"{name}: max codebook KL {quality.max_codebook_kl:.4f} mean {quality.mean_kl:.4f} "
            f"top-1 {100 * quality.top1_agreement:.1f} % SNR {quality.audio_snr_db:.1f} dB "
            f"{record['step_ms']} ms/step {record['decoder_mb']} MB {'pass' if quality.passed else 'FAIL'}",
            flush=True,
        )
        records = [r for r in records if r.get("variant") != name] + [record]
        if args.json:
            args.json.write_text(json.dumps(records, indent=2) + "\n")
        if not args.keep:
            import shutil

            shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
