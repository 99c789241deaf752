"""How many CPUs this process may really use: affinity mask and cgroup CPU quota, not the host's core count.

onnxruntime sizes its intra-op pool by the host's cores. In a pod limited to 2 CPUs on a 64-core host that is
64 spinning threads fighting over 2 CPUs' worth of time slices, and every decoder step waits for the slowest
of them. The runtime's default ``threads`` is the number computed here (docs/design.md §11).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

__all__ = ["available_cpus", "block_weights_advice", "cgroup_cpu_limit", "cpu_vector_flags"]


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _v2_limit(directory: Path) -> float | None:
    """cgroup v2 ``cpu.max`` ("QUOTA PERIOD" or "max PERIOD") as a CPU count; None when unlimited."""
    text = _read(directory / "cpu.max")
    if not text:
        return None
    parts = text.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    try:
        quota, period = int(parts[0]), int(parts[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _v1_limit(directory: Path) -> float | None:
    """cgroup v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``; quota -1 means unlimited."""
    quota, period = _read(directory / "cpu.cfs_quota_us"), _read(directory / "cpu.cfs_period_us")
    try:
        q, p = int(quota or "-1"), int(period or "0")
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def _own_paths(proc_cgroup: Path) -> tuple[str | None, str | None]:
    """This process's cgroup path in the v2 hierarchy and in the v1 ``cpu`` controller (from /proc/self/cgroup)."""
    v2 = v1 = None
    for line in (_read(proc_cgroup) or "").splitlines():
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        _, controllers, path = fields
        if controllers == "":
            v2 = path
        elif "cpu" in controllers.split(","):
            v1 = path
    return v2, v1


def _ancestors(root: Path, path: str | None) -> list[Path]:
    """The process's cgroup directory and every parent up to ``root`` (a limit anywhere above applies)."""
    dirs = [root]
    if path:
        current = root
        for part in path.strip("/").split("/"):
            if part:
                current = current / part
                dirs.append(current)
    return dirs


def cgroup_cpu_limit(
    root: str | os.PathLike = "/sys/fs/cgroup", proc_cgroup: str | os.PathLike = "/proc/self/cgroup"
) -> float | None:
    """The tightest CPU quota (in CPUs, possibly fractional) of this process's cgroup and its parents, v2 or v1;
    None when there is none (or the files cannot be read: not Linux, no cgroup mount)."""
    root, proc_cgroup = Path(root), Path(proc_cgroup)
    v2_path, v1_path = _own_paths(proc_cgroup)
    limits = []
    for v2_root in (root, root / "unified"):  # "unified": the v2 mount of a hybrid v1 + v2 host
        limits += [_v2_limit(d) for d in _ancestors(v2_root, v2_path)]
    for v1_root in (root / "cpu", root / "cpu,cpuacct", root / "cpuacct,cpu"):
        if v1_root.is_dir():
            limits += [_v1_limit(d) for d in _ancestors(v1_root, v1_path)]
    found = [limit for limit in limits if limit is not None]
    return min(found) if found else None


def available_cpus() -> int:
    """CPUs this process may run on (affinity) capped by its cgroup quota, at least 1.

    A fractional quota is rounded down (1.5 CPUs -> 1 thread): a thread beyond the quota is throttled,
    and with spinning workers a throttled thread stalls the whole step.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_limit()
    if quota is not None:
        cpus = min(cpus, max(1, math.floor(quota)))
    return max(1, cpus)


#: CPU flags (as /proc/cpuinfo names them) under which onnxruntime's 8-bit MatMulNBits kernel beat per-tensor
#: int8 in our measurements; without them (AVX2 only) it ran 1.4x slower at one prompt, 2.2x at four
#: (benchmarks/matmul_formats.py, docs/design.md §8)
_NBITS_FAST_FLAGS = frozenset({"avx512_vnni", "avx_vnni"})


def cpu_vector_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str] | None:
    """The CPU's flags from /proc/cpuinfo (first processor), None where that file is missing (not Linux)."""
    text = _read(cpuinfo)
    if text is None:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return None


def block_weights_advice(precision_plan: dict, flags: frozenset[str] | None) -> str | None:
    """A warning when an export's 8-bit block weights will run slower here than per-tensor int8, else None.

    Why at load: the export is made on one machine and served on another, and which 8-bit format is faster
    depends on the serving CPU's instructions. Only x86 CPUs without VNNI are flagged (AVX2 present, no
    AVX-512 / AVX VNNI); other CPUs, or an unknown CPU, get no advice.
    """
    formats = precision_plan.get("matmuls", {}) if isinstance(precision_plan, dict) else {}
    block8 = sum(count for label, count in formats.items() if str(label).startswith("int8/b"))
    if not block8 or flags is None or "avx2" not in flags or flags & _NBITS_FAST_FLAGS:
        return None
    name = precision_plan.get("name", "?")
    return (
        f"this export ({name}) has {block8} decoder MatMuls with 8-bit block weights (MatMulNBits); on this CPU "
        "(AVX2, no AVX-512 VNNI or AVX-VNNI) that kernel runs slower than per-tensor int8 (measured 1.4x at one "
        "prompt, 2.2x at four): for speed here, export with --precision cpu-fast (per-tensor int8) "
        "(benchmarks/matmul_formats.py measures this node; docs/design.md §8)"
    )
