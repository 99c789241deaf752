"""Decoder ms/step of an export on this machine, without the transformers reference (large checkpoints).

    python benchmarks/step_time.py EXPORT_DIR [--steps 60] [--threads 2] [--json OUT]

One prompt with classifier-free guidance (decoder batch 2), sampling, an 8-step warm-up, then ``--steps``
decoder steps; prints load time, prefill, median / p90 step time, and peak RSS both ways (max RSS counts
the mapped weight files; anonymous RSS is what the process really holds, e.g. onnxruntime's prepacked
weights).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path


def _anon_rss() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("export_dir", type=Path)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    from musicgen_onnx.runtime import MusicGen

    started = time.perf_counter()
    model = MusicGen.load(args.export_dir, provider="cpu", threads=args.threads)
    load_s = time.perf_counter() - started
    anon_after_load = _anon_rss()
    text = "80s synthwave with a driving bassline"
    model.generate_detailed(text, max_new_tokens=8, seed=0)
    result = model.generate_detailed(text, max_new_tokens=args.steps, seed=1)
    steps_ms = [1000 * t for t in result.step_times[1:]]
    record = {
        "export_dir": str(args.export_dir),
        "threads": args.threads,
        "steps": len(steps_ms),
        "load_s": round(load_s, 2),
        "prefill_ms": round(1000 * result.step_times[0], 1),
        "step_median_ms": round(statistics.median(steps_ms), 1),
        "step_p90_ms": round(sorted(steps_ms)[int(0.9 * (len(steps_ms) - 1))], 1),
        "anon_rss_after_load_gb": round(anon_after_load / 1e9, 2),
        "anon_rss_end_gb": round(_anon_rss() / 1e9, 2),
        "max_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9, 2),
    }
    print(json.dumps(record), file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
