"""What a batched decoder step costs per prompt: step time by prompts in the batch and by position, and where
the time goes by operator; several exports (e.g. an fp32 and an int8 KV cache) side by side.

    python benchmarks/step_rows.py EXPORT_DIR [EXPORT_DIR ...] [--positions 100 500 1000] [--prompts 1 2 3 4]
        [--profile-at 500] [--threads 2] [--out benchmarks/results/step-rows-int8.json]

Runs the continuous-batching engine's own step (``SlotDecoder``, the compact CPU layout) with every prompt at
the same position, random token ids, and the cache pages written beforehand (a never-written calloc page reads
as the shared zero page and would make the first steps look slow). Each cell is the median of ``--repeats``
steps after two warm-up steps; with several exports the cells are measured interleaved (position, prompts, then
each export), so a change in the machine's speed hits every export alike.

Each cell also gets its floor: the bytes a step must read (the decoder's weights once, embedding tables excepted:
``measure_common.decoder_weight_bytes``, as in ``realtime.py``; then per row its cross K/V and its KV cache up to
the position) over the read bandwidth measured here with the same threads
(``measure_common.read_bandwidth``). ``--profile-at P`` adds onnxruntime's per-operator profile at
position P for 1 and for the largest prompt count: the kernel time per step of each operator type (profiling
adds overhead; read the shares, not the totals), and where a step's wall time goes outside the kernels: the
Python step (``SlotDecoder.step``), onnxruntime's ``model_run``, and the kernels' sum.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from measure_common import decoder_weight_bytes, kernel_times_us, read_bandwidth


def _decoder(engine, session, slots: int, length: int):
    from musicgen_onnx.runtime.slots import SlotDecoder

    decoder = SlotDecoder(session, engine.manifest, slots, length)
    conditioning = engine.condition(["80s synthwave with a driving bassline"], 1)
    for slot in range(slots):
        decoder.set_text(slot, [kv[0] for kv in conditioning.cross_kv], conditioning.text_mask[0])
    for cache in decoder.cache:
        cache.fill(1 if cache.dtype == np.int8 else 0.01)  # touch every page: the loop writes before it reads
    return decoder


def _step_bytes(decoder, weights: int, prompts: int, position: int) -> int:
    """What one step over ``prompts`` slots at ``position`` must read: weights, then per row its text K/V and
    its cache (K and V, every layer) over ``position + 1`` positions."""
    rows = 2 * prompts
    cross = sum(c[:rows].nbytes for c in decoder.cross)
    per_position = sum(c[:rows, :, :1].nbytes for c in decoder.cache)
    return weights + cross + per_position * (position + 1)


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
        step_ms = _steps(decoder, prompts, args.profile_at, args.repeats + 2, rng)[2:]  # two warm-up steps
        events = json.loads(Path(session.end_profiling()).read_text())
    runs = [e for e in events if e.get("cat") == "Session" and e["name"] == "model_run"][-args.repeats :]
    per_op, _ = kernel_times_us(events, runs[0]["ts"])
    kernels = sum(per_op.values()) / args.repeats / 1000
    ops = {op: round(us / args.repeats / 1000, 2) for op, us in per_op.most_common(8)}
    wall = {
        "python_step": statistics.median(step_ms),  # SlotDecoder.step: Python + binding + model_run
        "model_run": statistics.median(e["dur"] / 1000 for e in runs),  # onnxruntime's Run
        "kernels": kernels,  # mean sum of kernel times: the rest of model_run is the executor's own
    }
    return {"ops": ops, "wall_ms": {k: round(v, 2) for k, v in wall.items()}}


def _label(engine) -> str:
    m = engine.manifest
    return f"{m.precision} weights, {m.decoder.kv_cache} cache"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("export_dirs", type=Path, nargs="+")
    parser.add_argument("--positions", type=int, nargs="+", default=[100, 500, 1000])
    parser.add_argument("--prompts", type=int, nargs="+", default=[1, 2, 3, 4])
    parser.add_argument("--repeats", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--profile-at", type=int, help="also profile by operator at this position")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    from musicgen_onnx.runtime.engine import Engine

    length = max([*args.positions, args.profile_at or 0]) + args.repeats + 4
    engines = [Engine.open(d, provider="cpu", threads=args.threads) for d in args.export_dirs]
    decoders = [_decoder(e, e.decoder, max(args.prompts), length) for e in engines]
    weights = [decoder_weight_bytes(e.model_dir / e.manifest.graphs["decoder"].file) for e in engines]
    bandwidth = read_bandwidth(args.threads)
    print(f"read bandwidth ({args.threads} threads): {bandwidth / 1e9:.1f} GB/s", file=sys.stderr)
    rng = np.random.default_rng(0)
    tables: list[dict] = [{} for _ in engines]
    floors: list[dict] = [{} for _ in engines]
    for position in args.positions:
        for prompts in args.prompts:
            for table, floor, decoder, weight in zip(tables, floors, decoders, weights, strict=True):
                times = _steps(decoder, prompts, position, args.repeats + 2, rng)[2:]
                table.setdefault(str(position), {})[str(prompts)] = round(statistics.median(times), 1)
                step_bytes = _step_bytes(decoder, weight, prompts, position)
                floor.setdefault(str(position), {})[str(prompts)] = round(1000 * step_bytes / bandwidth, 1)
        for engine, table in zip(engines, tables, strict=True):
            row = table[str(position)]
            print(f"{_label(engine)}, position {position}: " + ", ".join(f"{p} prompts {t} ms" for p, t in row.items()),
                  file=sys.stderr)  # fmt: skip
    record = {
        "threads": args.threads,
        "read_bandwidth_gb_s": round(bandwidth / 1e9, 2),
        "exports": [
            {"export_dir": str(e.model_dir), "label": _label(e), "weight_bytes": w, "step_ms": t, "floor_ms": f}
            for e, w, t, f in zip(engines, weights, tables, floors, strict=True)
        ],
    }
    if args.profile_at is not None:
        record["profile_position"] = args.profile_at
        for engine, entry in zip(engines, record["exports"], strict=True):
            entry["profile_ms_per_step"] = {
                str(p): _profile(engine, args, p, length) for p in sorted({min(args.prompts), max(args.prompts)})
            }
    header = "| export | position | " + " | ".join(f"{p} prompt{'s' if p > 1 else ''} (floor)" for p in args.prompts)
    print(header + " |")
    print("|" + " --- |" * (len(args.prompts) + 2))
    for entry in record["exports"]:
        for position, row in entry["step_ms"].items():
            cells = [f"{row[str(p)]} ({entry['floor_ms'][position][str(p)]})" for p in args.prompts]
            print(f"| {entry['label']} | {position} | " + " | ".join(cells) + " |")
    for entry in record["exports"]:
        for prompts, profile in entry.get("profile_ms_per_step", {}).items():
            print(f"profile, {entry['label']}, {prompts} prompt(s) at position {args.profile_at}: {profile}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
