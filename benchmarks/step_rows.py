"""What a batched decoder step costs per prompt: step time by prompts in the batch and by position, and where
the time goes by operator.

    python benchmarks/step_rows.py EXPORT_DIR [--positions 100 500 1000] [--prompts 1 2 3 4] [--profile-at 500]
        [--threads 2] [--out benchmarks/results/step-rows-int8.json]

Runs the continuous-batching engine's own step (``SlotDecoder``, the compact CPU layout) with every prompt at
the same position, random token ids, and the cache pages written beforehand (a never-written calloc page reads
as the shared zero page and would make the first steps look slow). Each cell is the median of ``--repeats``
steps after two warm-up steps. ``--profile-at P`` adds onnxruntime's per-operator profile at position P for 1 and
for the largest prompt count: the kernel time per step of each operator type (profiling adds overhead; read the
shares, not the totals).
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _decoder(engine, session, slots: int, length: int):
    from musicgen_onnx.runtime.slots import SlotDecoder

    decoder = SlotDecoder(session, engine.manifest, slots, length)
    conditioning = engine.condition(["80s synthwave with a driving bassline"], 1)
    for slot in range(slots):
        decoder.set_text(slot, [kv[0] for kv in conditioning.cross_kv], conditioning.text_mask[0])
    for cache in decoder.cache:
        cache.fill(0.01)  # touch every page: the real loop writes a position before reading it
    return decoder


def _steps(decoder, prompts: int, position: int, count: int, rng) -> list[float]:
    times = []
    for i in range(count):
        decoder.ids[:] = rng.integers(0, decoder.vocab, decoder.ids.shape)
        decoder.positions[:] = position + i
        started = time.perf_counter()
        decoder.step(2 * prompts)
        times.append(1000 * (time.perf_counter() - started))
    return times


def _profile(engine, args, prompts: int, length: int) -> dict:
    from musicgen_onnx.runtime.sessions import make_session_options, open_session

    options = make_session_options(args.threads)
    options.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        options.profile_file_prefix = str(Path(tmp) / "step")
        session = open_session(
            engine.model_dir / engine.manifest.graphs["decoder"].file, ["CPUExecutionProvider"], options
        )
        decoder = _decoder(engine, session, max(args.prompts), length)
        rng = np.random.default_rng(1)
        _steps(decoder, prompts, args.profile_at, args.repeats, rng)
        events = json.loads(Path(session.end_profiling()).read_text())
    per_op: collections.Counter = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_op[event["args"]["op_name"]] += event["dur"]
    return {op: round(us / args.repeats / 1000, 2) for op, us in per_op.most_common(8)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("export_dir", type=Path)
    parser.add_argument("--positions", type=int, nargs="+", default=[100, 500, 1000])
    parser.add_argument("--prompts", type=int, nargs="+", default=[1, 2, 3, 4])
    parser.add_argument("--repeats", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--profile-at", type=int, help="also profile by operator at this position")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    from musicgen_onnx.runtime.engine import Engine

    engine = Engine.open(args.export_dir, provider="cpu", threads=args.threads)
    length = max([*args.positions, args.profile_at or 0]) + args.repeats + 4
    decoder = _decoder(engine, engine.decoder, max(args.prompts), length)
    rng = np.random.default_rng(0)
    table: dict[str, dict[str, float]] = {}
    for position in args.positions:
        row = {}
        for prompts in args.prompts:
            times = _steps(decoder, prompts, position, args.repeats + 2, rng)[2:]
            row[str(prompts)] = round(statistics.median(times), 1)
        table[str(position)] = row
        print(f"position {position}: " + ", ".join(f"{p} prompts {t} ms" for p, t in row.items()), file=sys.stderr)
    record = {"export_dir": str(args.export_dir), "threads": args.threads, "step_ms": table}
    if args.profile_at is not None:
        record["profile_position"] = args.profile_at
        record["profile_ms_per_step"] = {
            str(p): _profile(engine, args, p, length) for p in sorted({min(args.prompts), max(args.prompts)})
        }
    header = "| position | " + " | ".join(f"{p} prompt{'s' if p > 1 else ''}" for p in args.prompts) + " |"
    print(header)
    print("|" + " --- |" * (len(args.prompts) + 1))
    for position, row in table.items():
        print(f"| {position} | " + " | ".join(f"{row[str(p)]}" for p in args.prompts) + " |")
    for prompts, ops in record.get("profile_ms_per_step", {}).items():
        print(f"profile, {prompts} prompt(s) at position {args.profile_at}: {ops}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
