"""Decoder step latency on a quiet CPU and next to one busy process, for a few thread / spin settings.

    musicgen-onnx export --random-weights facebook/musicgen-stereo-small DIR --precision int8
    python benchmarks/neighbours.py DIR [--steps 150] [--out benchmarks/results/neighbours-int8.json]

Each configuration loads the export with its ``threads`` / ``allow_spinning`` and generates ``--steps``
decoder steps (batch 1 with CFG, sampled, top-k 250) twice: once on a quiet machine, once while a neighbour
process spins on one core (a pure-Python busy loop, killed right after). Prints a table of median and p90
step times; writes every step time as JSON. Configurations run interleaved, quiet then busy, so slow drift
of the machine shows up in both columns alike.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("musicgen_onnx.bench")

CONFIGS = [
    ("threads=None (default: usable CPUs), spinning", dict(threads=None, allow_spinning=None)),
    ("threads=None, allow_spinning=False", dict(threads=None, allow_spinning=False)),
    ("threads=1", dict(threads=1, allow_spinning=None)),
    ("threads=1, allow_spinning=False", dict(threads=1, allow_spinning=False)),
]


class BusyNeighbour:
    """A separate process burning one core until the block ends (bounded: killed on exit, at most 10 min)."""

    def __enter__(self) -> BusyNeighbour:
        code = "import time\nend = time.monotonic() + 600\nwhile time.monotonic() < end: pass\n"
        self.proc = subprocess.Popen([sys.executable, "-c", code])
        time.sleep(0.5)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)


def measure(model, steps: int) -> list[float]:
    result = model.generate_detailed(
        "lo-fi hip hop beat", max_new_tokens=steps, do_sample=True, top_k=250, guidance_scale=3.0, seed=0
    )
    return [1e3 * t for t in result.step_times[1:]]  # the prefill is not a step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("export_dir", type=Path)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)

    from musicgen_onnx.runtime import MusicGen
    from musicgen_onnx.runtime.cpus import available_cpus

    records = []
    for label, options in CONFIGS:
        model = MusicGen.load(args.export_dir, provider="cpu", verify=False, **options)
        measure(model, 10)  # warm-up
        for neighbour in (False, True):
            log.info("%s, %s", label, "busy neighbour" if neighbour else "quiet")
            if neighbour:
                with BusyNeighbour():
                    times = measure(model, args.steps)
            else:
                times = measure(model, args.steps)
            records.append(dict(config=label, **options, neighbour=neighbour, step_ms=times))
        del model
    print(f"usable CPUs: {available_cpus()}; {args.steps} steps, batch 1 + CFG; step ms median (p90)")
    print("| configuration | quiet | one busy neighbour |")
    print("| --- | --- | --- |")
    for label, _ in CONFIGS:
        cells = []
        for neighbour in (False, True):
            (rec,) = [r for r in records if r["config"] == label and r["neighbour"] == neighbour]
            t = np.asarray(rec["step_ms"])
            cells.append(f"{np.median(t):.1f} ({np.percentile(t, 90):.1f})")
        print(f"| {label} | {cells[0]} | {cells[1]} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"export": str(args.export_dir), "records": records}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
