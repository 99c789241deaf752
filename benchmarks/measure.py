"""Benchmark child processes: one system per process, so peak RSS and imports are per system.

``run.py`` starts ``python benchmarks/measure.py SYSTEM --spec JSON`` for each system and batch size
(SYSTEM: ``export``, ``transformers`` or ``ours``). The child logs progress on stderr and prints
exactly one line ``BENCH_RESULT {json}`` on stdout at the end. It can be run by hand the same way.

Timing points (``time.perf_counter``; on CUDA every point synchronises the device first):

* transformers: forward pre/post hooks registered from the outside on ``model.text_encoder`` and
  ``model.decoder``, plus a no-op ``StoppingCriteria`` that transformers calls once per step after
  the token is sampled. Step i = end of step i-1 (or decoder pre-hook of the prefill) -> end of step i,
  i.e. decoder forward + logits processing + sampling + cache bookkeeping, like ours.
* ours: ``GenerationResult.timings`` / ``step_times`` (the runtime's own clock), plus thin proxies
  around every onnxruntime session the model holds, which time ``run`` / ``run_with_iobinding``;
  Python overhead per step = step time - time inside the decoder session's run call.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

# One module per system (measure_export / measure_transformers / measure_ours) plus the shared helpers
# (measure_common). benchmarks/ is a scripts folder, not a package: the siblings import each other by plain
# name, which works because Python puts the running script's folder (benchmarks/) first on sys.path.
from measure_common import emit
from measure_export import run_export
from measure_ours import run_ours
from measure_transformers import run_transformers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("system", choices=("export", "transformers", "ours"))
    parser.add_argument("--spec", required=True, help="JSON object with the run's settings (see run.py)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S", stream=sys.stderr
    )
    spec = json.loads(args.spec)
    runner = {"export": run_export, "transformers": run_transformers, "ours": run_ours}[args.system]
    emit(runner(spec))
    return 0


if __name__ == "__main__":
    sys.exit(main())
