"""Per-step decoder time of a melody export (text + melody, CFG, batch 1): ``python benchmarks/melody_steps.py DIR``.

Generates ``--seconds`` of audio conditioned on a synthetic 10 s tune and prints load time, prefix (chroma +
prefix graph + text encoder) time, prefill time, ms/step (mean, median, last 50 steps) and the process's peak
RSS. Absolute numbers depend on what else the machine is running (benchmarks/README.md): quote them with a
side-by-side reference.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import numpy as np


def tune(seconds: float, sr: int = 32000) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    notes = np.array([261.63, 329.63, 392.0, 493.88])[(t / 0.5).astype(int) % 4]
    return (0.4 * np.sin(2 * np.pi * np.cumsum(notes) / sr)).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model_dir")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    from musicgen_onnx.runtime import MusicGen

    probe = np.ones(256 * 2**20 // 8)  # 256 MB: a single-thread read-bandwidth probe (machine state)
    t0 = time.perf_counter()
    for _ in range(4):
        probe.sum()
    bandwidth = 4 * probe.nbytes / (time.perf_counter() - t0) / 1e9
    t0 = time.perf_counter()
    model = MusicGen.load(args.model_dir, provider="cpu", threads=args.threads, verify=False)
    load = time.perf_counter() - t0
    cpu0, wall0 = time.process_time(), time.perf_counter()
    result = model.generate_detailed(
        "jazz trio with a walking bass", melody=tune(10.0), duration=args.seconds, seed=0, top_k=250
    )
    cpu_share = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
    steps = [s * 1e3 for s in result.step_times[1:]]
    t = result.timings
    print(
        f"{args.model_dir}: precision {model.manifest.precision}, {len(steps)} steps, load {load:.1f} s, "
        f"conditioning {t.get('text_encode', 0):.2f} s, prefill {t['prefill'] * 1e3:.0f} ms, "
        f"ms/step mean {statistics.fmean(steps):.1f} median {statistics.median(steps):.1f} "
        f"last-50 {statistics.fmean(steps[-50:]):.1f}, decode {t['audio_decode']:.2f} s, total {t['total']:.1f} s, "
        f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB, process CPU {cpu_share:.2f} "
        f"cores, read probe {bandwidth:.1f} GB/s"
    )


if __name__ == "__main__":
    main()
