"""Shared parts of the benchmark children (``measure.py``): the result line, the prompts, percentiles,
RSS / GPU-memory / CPU-contention sampling of a timed phase, and the per-step statistics every system reports.
"""

from __future__ import annotations

import collections
import json
import logging
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

RESULT_MARKER = "BENCH_RESULT "
DEFAULT_TEXTS = (
    "80s pop track with bassy drums and synth",
    "lo-fi hip hop beat with warm piano and vinyl crackle",
    "epic orchestral score with choir and timpani",
    "90s rock song with loud guitars and heavy drums",
    "ambient electronic soundscape with slow pads",
    "jazz trio with upright bass, brushed drums and piano",
    "reggae groove with offbeat guitar and deep bass",
    "uplifting house track with a catchy piano riff",
)

log = logging.getLogger("bench")


def texts_for(batch: int) -> list[str]:
    return [DEFAULT_TEXTS[i % len(DEFAULT_TEXTS)] for i in range(batch)]


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def peak_rss_bytes() -> int:
    """Lifetime peak RSS of this process (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def current_rss_bytes() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


class PhaseMonitor:
    """Watches one timed phase: this process's RSS (and, on CUDA, the device's used memory), sampled by a
    background thread every 50 ms, and the CPU time other processes used meanwhile.

    Gives the peak *during* the phase (ru_maxrss cannot be reset) and the peak before a given moment (to
    separate the token loop from the audio decode). ``other_cpu_percent``: share of the whole machine's
    CPU time (all cores) spent outside this process (busy time of /proc/stat incl. steal, minus ours);
    a few percent is background noise, more means the numbers are contaminated.
    """

    def __init__(self, period: float = 0.05, gpu: bool = False) -> None:
        import psutil

        self._psutil = psutil
        self._proc = psutil.Process()
        self._period = period
        self._gpu = gpu and shutil.which("nvidia-smi") is not None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.samples: list[tuple[float, int]] = []  # (perf_counter, rss)
        self.peak_anon_rss = 0  # anonymous RSS (rss - file-backed/shared pages): mapped weight files excluded
        self.peak_gpu_used: int | None = None
        self.gpu_baseline: int | None = gpu_used_bytes() if self._gpu else None
        self.other_cpu_percent: float | None = None

    def _cpu(self) -> tuple[float, float, float]:
        t = self._psutil.cpu_times()
        busy = sum(getattr(t, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq", "steal"))
        own = self._proc.cpu_times()
        return time.perf_counter(), busy, own.user + own.system

    def _sample(self) -> None:
        info = self._proc.memory_info()
        self.samples.append((time.perf_counter(), info.rss))
        self.peak_anon_rss = max(self.peak_anon_rss, info.rss - getattr(info, "shared", 0))

    def _loop(self) -> None:
        next_gpu = 0.0
        while not self._stop.is_set():
            self._sample()
            now = time.monotonic()
            if self._gpu and now >= next_gpu:
                used = gpu_used_bytes()
                if used is not None:
                    self.peak_gpu_used = max(self.peak_gpu_used or 0, used)
                next_gpu = now + 0.25
            self._stop.wait(self._period)

    @property
    def peak_rss(self) -> int:
        return max(rss for _, rss in self.samples)

    def peak_rss_before(self, t: float) -> int:
        """Peak RSS of the samples taken before perf_counter time ``t`` (at least the first sample)."""
        return max([rss for ts, rss in self.samples if ts <= t] or [self.samples[0][1]])

    def __enter__(self) -> PhaseMonitor:
        self._cpu0 = self._cpu()
        self._sample()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
        (w0, b0, o0), (w1, b1, o1) = self._cpu0, self._cpu()
        ncpu = self._psutil.cpu_count() or 1
        self.other_cpu_percent = max(0.0, 100.0 * ((b1 - b0) - (o1 - o0)) / ((w1 - w0) * ncpu))


def gpu_used_bytes() -> int | None:
    """Used memory of GPU 0 (whole device, all processes) from nvidia-smi, or None."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
        return int(float(out.strip().splitlines()[0]) * 1024 * 1024)
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def emit(result: dict[str, Any]) -> None:
    sys.stdout.write(RESULT_MARKER + json.dumps(result) + "\n")
    sys.stdout.flush()


def step_summary(step_times: list[float]) -> dict[str, Any]:
    """Prefill (step 0) and the per-step statistics of the remaining steps, in ms."""
    steps = [t * 1e3 for t in step_times[1:]]
    return {
        "prefill_ms": step_times[0] * 1e3 if step_times else None,
        "num_steps": len(step_times),
        "step_median_ms": percentile(steps, 50),
        "step_p90_ms": percentile(steps, 90),
        "step_mean_ms": sum(steps) / len(steps) if steps else None,
        "decode_loop_s": float(sum(step_times)),
        # past length of step i is i: no audio prompt, one start token, one new column per step
        "step_times_ms": [round(t * 1e3, 4) for t in step_times],
    }


def cpu_description() -> dict[str, Any]:
    """The CPU's model and its vector-instruction flags: which quantized kernels are fastest depends on them
    (AVX-512 VNNI or AVX2 only, docs/design.md §8), so every CPU speed record should say which CPU it ran on."""
    import platform

    model, flags = platform.processor() or "?", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("?", "", platform.machine()):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    vector = sorted(flag for flag in flags if flag.startswith(("avx", "amx")) or "vnni" in flag)
    return {"cpu_model": model, "cpu_flags": vector}


def kernel_times_us(events: list[dict[str, Any]], since_us: float) -> tuple[collections.Counter, collections.Counter]:
    """Kernel microseconds per operator type and per node name in an onnxruntime profile trace (the JSON events of
    ``end_profiling``), counting only nodes that started at or after ``since_us`` (the runs to summarise)."""
    per_op: collections.Counter = collections.Counter()
    per_node: collections.Counter = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") and event["ts"] >= since_us:
            per_op[event["args"]["op_name"]] += event["dur"]
            per_node[event["name"].removesuffix("_kernel_time")] += event["dur"]
    return per_op, per_node


def read_bandwidth(threads: int, megabytes: int = 512, repeats: int = 7) -> float:
    """Bytes per second onnxruntime's CPU kernels stream from memory with ``threads`` threads.

    The one probe behind every "floor" in benchmarks/ (bytes a step must read over this number), so that floors
    from different scripts compare. A ReduceSum over the last axis of a [2048, n] float tensor, median of
    ``repeats``: onnxruntime splits the rows over its pool. Two probes used before gave other numbers on the
    same minute: a reduction to a scalar runs on one thread (~18 GB/s where this reads ~28 on the AVX2 machine),
    and numpy's ``add.reduce`` in Python threads read ~10 % less than this.
    """
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper

    rows = 2048
    columns = megabytes * (1 << 20) // (4 * rows)
    node = helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=0)
    graph = helper.make_graph(
        [node], "read", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, columns])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows])],
        [helper.make_tensor("axes", TensorProto.INT64, [1], [1])],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    x = np.ones((rows, columns), np.float32)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        session.run(None, {"x": x})
        times.append(time.perf_counter() - started)
    return x.nbytes / statistics.median(times)


def decoder_weight_bytes(decoder_file: Path) -> int:
    """Weight bytes a decoder step reads: every initializer of the decoder graph at ``decoder_file`` except the
    embedding tables (a Gather reads one row of those), scales and zero points included.

    The one count behind every step floor in benchmarks/ (``realtime.py``, ``step_rows.py``). They used to count
    two ways (all initializers vs the inputs of the MatMul nodes), 0.04-0.24 % apart by the LayerNorm weights.
    """
    import numpy as np
    import onnx

    graph = onnx.load(decoder_file, load_external_data=False).graph
    consumers: dict[str, set[str]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, set()).add(node.op_type)
    total = 0
    for tensor in graph.initializer:
        if consumers.get(tensor.name, set()) <= {"Gather"}:
            continue
        size = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
        total += int(np.prod(tensor.dims, dtype=np.int64)) * size
    return total
