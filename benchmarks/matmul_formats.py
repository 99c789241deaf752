"""Which 8-bit and 4-bit weight format is fastest on this CPU? (docs/design.md §8)

    flock /tmp/musicgen-heavy.lock python benchmarks/matmul_formats.py [--rows 2 8] [--threads 2] [--json OUT]

A decoder step of stereo-small is, to the CPU, ~336 M weights read by a few activation rows (2 for one prompt
with CFG, 8 for four prompts). This times exactly that, without the rest of the model: a chain of 40 FFN-shaped
MatMul pairs (1024 -> 4096 -> 1024, 335.5 M weights) fed ``--rows`` rows, in every weight format the exporter
writes, each quantized by the exporter's own functions (``export/precision.py``) from the same random fp32
weights. Per format: median ms per pass, the weight bytes it reads and the rate (bytes / time), next to the
read bandwidth of the machine (``measure_common.read_bandwidth``, the same threads).

Why: the fastest 8-bit format depends on the CPU's instructions. With AVX-512 VNNI the 8-bit MatMulNBits
kernel (blocks of 256) ran faster than per-tensor dynamic int8; on an AVX2-only CPU the order can reverse.
Run this on the node you deploy to before choosing between ``cpu-fast`` (per-tensor int8) and
``cpu-fast-vnni`` (8-bit blocks), or ``int8`` and ``int8-blocks``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from measure_common import cpu_description, read_bandwidth

logger = logging.getLogger("musicgen_onnx")

HIDDEN, FFN, PAIRS = 1024, 4096, 40


def build_chain(path: Path, seed: int = 0) -> int:
    """The fp32 chain model; returns its weight count."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, weights = [], []
    current = "x"
    for i in range(PAIRS):
        for j, (k, n) in enumerate(((HIDDEN, FFN), (FFN, HIDDEN))):
            name = f"w{i}_{j}"
            weights.append(numpy_helper.from_array((rng.standard_normal((k, n)) * 0.02).astype(np.float32), name))
            out = "y" if (i, j) == (PAIRS - 1, 1) else f"h{i}_{j}"
            nodes.append(helper.make_node("MatMul", [current, name], [out], name=f"MatMul_{i}_{j}"))
            current = out
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", HIDDEN])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", HIDDEN])],
        weights,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    onnx.save(model, str(path), save_as_external_data=True, location=path.name + ".data")
    return PAIRS * 2 * HIDDEN * FFN


def _session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _file_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.iterdir() if p.name.startswith(path.name))


def time_pass(path: Path, rows: int, threads: int, repeats: int) -> float:
    """Median seconds of one pass through the chain."""
    session = _session(path, threads)
    x = np.random.default_rng(1).standard_normal((rows, HIDDEN)).astype(np.float32)
    for _ in range(3):
        session.run(None, {"x": x})
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        session.run(None, {"x": x})
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[2, 8], help="activation rows (2 = 1 prompt + CFG)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--json", type=Path, help="write the record here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    from musicgen_onnx.export.precision import quantize_int4, quantize_int8

    formats = {
        "fp32": None,
        "int8 (per tensor, dynamic)": quantize_int8,
        "int8 blocks of 256 (MatMulNBits)": lambda p: quantize_int4(p, 256, 8),
        "int8 blocks of 32 (MatMulNBits)": lambda p: quantize_int4(p, 32, 8),
        "int4 blocks of 128 (MatMulNBits)": lambda p: quantize_int4(p, 128, 4),
        "int4 blocks of 256 (MatMulNBits)": lambda p: quantize_int4(p, 256, 4),
        "int4 blocks of 32 (MatMulNBits)": lambda p: quantize_int4(p, 32, 4),
        # what the exporter does not write, and why: fp32 activations (accuracy level 1) instead of int8 blocks
        "int4 blocks of 128, fp32 activations (MatMulNBits, accuracy level 1)": lambda p: quantize_int4(p, 128, 4, 1),
    }
    record: dict = {
        **cpu_description(),
        "threads": args.threads,
        "weights": PAIRS * 2 * HIDDEN * FFN,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "load_average": os.getloadavg(),
        "results": [],
    }
    with tempfile.TemporaryDirectory(prefix="matmul-formats-") as tmp:
        work = Path(tmp)
        record["read_bandwidth_gbs"] = read_bandwidth(args.threads) / 1e9
        logger.info("read bandwidth: %.1f GB/s (%d threads)", record["read_bandwidth_gbs"], args.threads)
        for name, quantize in formats.items():
            folder = work / name.split()[0] / str(len(record["results"]))
            folder.mkdir(parents=True)
            path = folder / "chain.onnx"
            build_chain(path)
            if quantize is not None:
                quantize(path)
            size = _file_bytes(path)
            for rows in args.rows:
                seconds = time_pass(path, rows, args.threads, args.repeats)
                result = {"format": name, "rows": rows, "ms": seconds * 1e3, "bytes": size, "gbs": size / seconds / 1e9}
                record["results"].append(result)
                logger.info(
                    "%-34s rows %d: %7.2f ms, %6.1f MB, %5.1f GB/s",
                    name,
                    rows,
                    seconds * 1e3,
                    size / 1e6,
                    result["gbs"],
                )
    record["load_average_after"] = os.getloadavg()
    print(
        f"CPU: {record['cpu_model']} ({' '.join(record['cpu_flags'])}), {args.threads} threads, "
        f"read bandwidth {record['read_bandwidth_gbs']:.1f} GB/s"
    )
    print("| format | " + " | ".join(f"{rows} rows" for rows in args.rows) + " | MB |")
    print("| --- | " + " | ".join("---" for _ in args.rows) + " | --- |")
    for name in formats:
        cells = [r for r in record["results"] if r["format"] == name]
        print(
            f"| {name} | "
            + " | ".join(f"{r['ms']:.1f} ms ({r['gbs']:.1f} GB/s)" for r in cells)
            + f" | {cells[0]['bytes'] / 1e6:.0f} |"
        )
    if args.json:
        args.json.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
