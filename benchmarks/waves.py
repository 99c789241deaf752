"""One call with more prompts than slots: wall time of ``generate`` with N prompts on loads of different slot counts.

    python benchmarks/waves.py EXPORT_DIR [--prompts 16] [--duration 2] [--slots 4 16] [--threads 2] [--repeats 1]
        [--seed 0] [--warmup full] [--out benchmarks/results/waves-int8.json]

For each slot count the model is loaded (``MusicGen.load(max_batch=slots)``) and warmed up with one untimed call
(``--warmup full``: the measured call itself with another seed, so onnxruntime's arenas have grown to its shapes and
its KV-cache pages are touched, as on a server that has run for a while; ``short``: one 0.5 s prompt), then
``generate_detailed(N prompts, duration, seed)`` is timed ``--repeats`` times: with fewer slots than prompts the
call runs in waves (runtime/waves.py), with as many it is one batch. Reported per run: wall time, the result's
stage timings (text encoding summed over the parts, decoder steps, EnCodec decode), the engine's decoder steps,
and whether the codes equal the first slot count's (int8 exports quantize activations per tensor, so a row's
logits move slightly with the other rows: sampled codes may differ between batch compositions there; fp32 ones
do not). Measure under the shared lock and quote ``/proc/loadavg`` (printed before and after each run).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure_common import texts_for


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def run(args: argparse.Namespace) -> dict:
    from musicgen_onnx.runtime import MusicGen

    texts = texts_for(args.prompts)
    record: dict = {
        "model": str(args.model),
        "prompts": args.prompts,
        "duration": args.duration,
        "threads": args.threads,
        "seed": args.seed,
        "runs": [],
    }
    reference = None
    for slots in args.slots:
        t0 = time.perf_counter()
        with MusicGen.load(args.model, provider="cpu", threads=args.threads, max_batch=slots) as model:
            load_s = time.perf_counter() - t0
            if args.warmup == "full":  # the measured call once: arenas at its shapes, its cache pages touched
                model.generate(texts, duration=args.duration, do_sample=True, seed=args.seed + 1)
            else:  # sessions and the engine thread only (a first call then pays its page faults and arena growth)
                model.generate(texts[0], duration=0.5, seed=0)
            for repeat in range(args.repeats):
                before, steps0 = _loadavg(), model.batcher.steps
                started = time.perf_counter()
                result = model.generate_detailed(texts, duration=args.duration, do_sample=True, seed=args.seed)
                wall = time.perf_counter() - started
                if reference is None:
                    reference = result.codes
                equal_rows = int(sum(np.array_equal(a, b) for a, b in zip(result.codes, reference, strict=True)))
                entry = {
                    "slots": slots,
                    "repeat": repeat,
                    "waves": -(-args.prompts // slots),
                    "wall_s": round(wall, 2),
                    "audio_s_per_s": round(args.prompts * args.duration / wall, 3),
                    "decoder_steps": model.batcher.steps - steps0,
                    "text_encode_s": round(result.timings.get("text_encode", 0.0), 2),
                    "decode_steps_s": round(result.timings.get("decode_steps", 0.0), 2),
                    "audio_decode_s": round(result.timings.get("audio_decode", 0.0), 2),
                    "rows_equal_to_first": equal_rows,
                    "load_s": round(load_s, 1),
                    "loadavg_before": before,
                    "loadavg_after": _loadavg(),
                }
                record["runs"].append(entry)
                print(json.dumps(entry), flush=True)
    by_slots = {s: statistics.median(r["wall_s"] for r in record["runs"] if r["slots"] == s) for s in args.slots}
    record["median_wall_s"] = by_slots
    return record


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", type=Path, help="export directory")
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--duration", type=float, default=2.0, help="seconds per clip")
    p.add_argument("--slots", type=int, nargs="+", default=[4, 16], help="max_batch of each load")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmup", choices=("full", "short"), default="full", help="untimed call before the runs")
    p.add_argument("--out", type=Path, default=None, help="write the JSON record here")
    args = p.parse_args()
    record = run(args)
    print("slots  median wall s")
    for slots, wall in record["median_wall_s"].items():
        print(f"{slots:5d}  {wall:.2f}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
