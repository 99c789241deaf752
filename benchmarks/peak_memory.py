"""Run a command and report its peak memory: max RSS (what ``/usr/bin/time -v`` shows) and peak anonymous RSS.

transformers memory-maps safetensors checkpoints and onnxruntime maps external-data files: those pages are
file-backed and reclaimable, and max RSS counts them. Peak anonymous RSS (``RssAnon`` in /proc/PID/status,
summed over the process tree, sampled every ``--interval`` seconds) is the memory the command really needs.

    python benchmarks/peak_memory.py [--interval 0.05] [--json OUT] -- musicgen-onnx export ...

Linux only (reads /proc).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path


def _status_kb(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        try:
            with open(f"/proc/{current}/task/{current}/children") as handle:
                todo += [int(p) for p in handle.read().split()]
        except (FileNotFoundError, ProcessLookupError):
            pass
    return pids


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--interval", type=float, default=0.05)
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give a command after --")

    started = time.perf_counter()
    child = subprocess.Popen(command)
    peak = {"anon_kb": 0, "rss_kb": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            pids = _tree(child.pid)
            peak["anon_kb"] = max(peak["anon_kb"], sum(_status_kb(p, "RssAnon") for p in pids))
            peak["rss_kb"] = max(peak["rss_kb"], sum(_status_kb(p, "VmRSS") for p in pids))
            done.wait(args.interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    rc = child.wait()
    done.set()
    sampler.join()
    max_rss_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result = {
        "command": command,
        "returncode": rc,
        "wall_s": round(time.perf_counter() - started, 2),
        "max_rss_gb": round(max_rss_kb * 1024 / 1e9, 3),
        "peak_anon_rss_gb": round(peak["anon_kb"] * 1024 / 1e9, 3),
        "peak_sampled_rss_gb": round(peak["rss_kb"] * 1024 / 1e9, 3),
    }
    print(json.dumps(result), file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
