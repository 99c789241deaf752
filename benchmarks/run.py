"""Side-by-side benchmark: transformers ``generate`` vs musicgen-onnx on the same random weights.

    python benchmarks/run.py --model facebook/musicgen-stereo-small --duration 10 --batch 1 4 --threads 2

Builds (or reuses) a ``--random-weights`` full-size export, then runs each system for each batch size in
its own subprocess (``benchmarks/measure.py``), writes ``benchmarks/results/<name>.json`` + ``latest.json``
and ``<name>.png``, and prints a table. See benchmarks/README.md for what each number means.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import logging
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import report
from measure_common import RESULT_MARKER

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
log = logging.getLogger("bench")
CONTENTION_WARN_PERCENT = 5.0


# ---- settings --------------------------------------------------------------------------------------------
def default_cache_dir() -> Path:
    root = os.environ.get("MUSICGEN_ONNX_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "musicgen-onnx"
    return base / "bench"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--model",
        default="facebook/musicgen-stereo-small",
        help="released checkpoint name (its architecture is built with random weights; nothing is downloaded)",
    )
    p.add_argument("--duration", type=float, default=10.0, help="seconds of audio per clip (default 10)")
    p.add_argument("--steps-only", type=int, metavar="N", help="quick mode: N decoder steps instead of --duration")
    p.add_argument("--batch", type=int, nargs="+", default=[1], help="batch sizes (prompts; CFG doubles them)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="intra-op threads for both systems")
    p.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="cuda: onnxruntime provider 'cuda' and transformers .cuda().half()",
    )
    p.add_argument("--precision", default="fp32", help="export variant: fp32, int8, int4 (CPU) or fp16 (GPU)")
    p.add_argument(
        "--cuda-graph",
        choices=("auto", "on", "off"),
        default="auto",
        help="ours: capture the decoder step as a CUDA graph (auto: on CUDA when the export allows it)",
    )
    p.add_argument(
        "--device-sampling",
        choices=("auto", "on", "off"),
        default="auto",
        help="ours: select tokens with the sampler graph on the device (auto: on CUDA)",
    )
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="where exports are kept, as <name>-<precision> (default $MUSICGEN_ONNX_CACHE/bench or "
        "~/.cache/musicgen-onnx/bench)",
    )
    p.add_argument("--rebuild", action="store_true", help="re-export even if a cached export exists")
    p.add_argument(
        "--reuse-export",
        action="store_true",
        help="use a cached export even if the exporter's source changed since it was made",
    )
    p.add_argument("--skip-transformers", action="store_true", help="run only musicgen-onnx")
    p.add_argument("--skip-ours", action="store_true", help="run only transformers")
    p.add_argument("--out", type=Path, default=HERE / "results", help="output folder (default benchmarks/results)")
    p.add_argument("--name", help="result file stem (default: UTC timestamp + model + device)")
    p.add_argument("--guidance-scale", type=float, default=3.0)
    p.add_argument("--top-k", type=int, default=250, help="audiocraft's default 250 (transformers' own is 50)")
    p.add_argument("--seed", type=int, default=0, help="weights seed (export and transformers) and sampling seed")
    p.add_argument("--warmup-steps", type=int, default=10)
    p.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="S",
        help="before each timed child, wait up to S seconds for the machine to be idle (shared machines)",
    )
    p.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="after the timed run, cProfile an N-step generation of ours and store the top functions",
    )
    args = p.parse_args(argv)
    if args.steps_only is not None and args.steps_only < 6:
        # the runtime needs max_length >= 2C - 1 (C = 4): below it transformers applies no delay pattern
        p.error("--steps-only must be at least 6 (2C - 2 steps with C = 4 codebooks per channel)")
    if args.duration <= 0:
        p.error("--duration must be positive")
    if any(b < 1 for b in args.batch) or args.threads < 1:
        p.error("--batch and --threads must be positive")
    if args.skip_transformers and args.skip_ours:
        p.error("nothing to run: both systems skipped")
    return args


# ---- the export ---------------------------------------------------------------------------------------------
def exporter_fingerprint() -> str:
    """Hash of the exporter and graph-wrapper sources: a cached export made by other code is rebuilt."""
    h = hashlib.sha256()
    for pkg in ("musicgen_onnx.export", "musicgen_onnx.graphs"):
        spec = importlib.util.find_spec(pkg)  # finds the folder without importing it (graphs imports torch)
        for root in spec.submodule_search_locations if spec else []:
            for f in sorted(Path(root).rglob("*")):
                if f.suffix in (".py", ".json") and "__pycache__" not in f.parts:
                    h.update(f"{pkg}/{f.relative_to(root)}".encode())
                    h.update(f.read_bytes())
    return h.hexdigest()[:16]


def cached_export_ok(export_dir: Path, model: str, precision: str) -> tuple[bool, str]:
    from musicgen_onnx.runtime.manifest import Manifest

    try:
        m = Manifest.load(export_dir)
    except (OSError, ValueError) as exc:
        return False, str(exc)
    if m.source != model or not m.random_weights or m.precision != precision:
        return False, (
            f"it holds {m.source} (random_weights={m.random_weights}, precision={m.precision}), "
            f"not a random-weights {model} {precision} export"
        )
    return True, ""


def ensure_export(args: argparse.Namespace, model: str, export_dir: Path) -> dict[str, Any]:
    """Reuse a valid cached export or build one in a child process; returns what is known about the export."""
    ok, why = cached_export_ok(export_dir, model, args.precision)
    stamp_path = export_dir.with_name(export_dir.name + ".bench.json")
    stamp = json.loads(stamp_path.read_text()) if ok and stamp_path.is_file() else {}
    fingerprint = exporter_fingerprint()
    rebuild = args.rebuild
    if ok and not rebuild:
        if stamp.get("seed") != args.seed:
            log.info("cached export %s has seed %s, not %d: rebuilding", export_dir, stamp.get("seed"), args.seed)
            rebuild = True
        elif stamp.get("fingerprint") != fingerprint and not args.reuse_export:
            log.info(
                "cached export %s was made by other exporter code: rebuilding (--reuse-export keeps it)", export_dir
            )
            rebuild = True
        else:
            log.info("reusing export %s", export_dir)
            return {**stamp, "reused": True}
    if export_dir.exists() and not ok and not rebuild and stamp_path.is_file():
        log.info("cached export %s is not usable (%s): rebuilding it", export_dir, why)
        rebuild = True
    if export_dir.exists() and not ok and not rebuild:
        raise SystemExit(f"{export_dir} exists but is not usable ({why}); pass --rebuild to replace it")
    log.info("building the export (full size, random weights; ~1-2 min and ~7.5 GB RSS for stereo-small)")
    spec = {
        "model": model,
        "precision": args.precision,
        "seed": args.seed,
        "out_dir": str(export_dir),
        "overwrite": export_dir.exists(),
    }
    if args.wait_idle > 0:
        wait_idle(args.wait_idle)  # the export takes most of the machine: do not pile onto another heavy job
    result = run_child("export", spec)
    stamp = {
        "seed": args.seed,
        "fingerprint": fingerprint,
        "git_commit": versions().get("git_commit"),
        "created": now_iso(),
        **result,
    }
    stamp_path.write_text(json.dumps(stamp, indent=2) + "\n")
    return {**stamp, "reused": False}


def wait_idle(max_wait: float, busy_percent: float = 10.0) -> float:
    """Wait until the machine's CPU use (other processes: this one is idle) is below ``busy_percent``
    for 3 s in a row, at most ``max_wait`` seconds; returns the last reading."""
    import psutil

    deadline = time.monotonic() + max_wait
    quiet, reading, announced = 0, 100.0, False
    while time.monotonic() < deadline:
        reading = psutil.cpu_percent(interval=1.0)
        quiet = quiet + 1 if reading < busy_percent else 0
        if quiet >= 3:
            break
        if not announced:
            log.info("waiting (up to %.0f s) for the machine to be idle: CPU %.0f%% busy", max_wait, reading)
            announced = True
    return reading


# ---- children ----------------------------------------------------------------------------------------------
def run_child(system: str, spec: dict[str, Any]) -> dict[str, Any]:
    env = dict(os.environ)
    if "threads" in spec:
        env["OMP_NUM_THREADS"] = str(spec["threads"])  # torch and any OpenMP pool: the requested size
    cmd = [sys.executable, str(HERE / "measure.py"), system, "--spec", json.dumps(spec)]
    t0 = time.perf_counter()
    load_before = os.getloadavg()[0]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None, text=True, env=env, cwd=REPO)
    elapsed = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_MARKER)]
    if proc.returncode != 0 or not lines:
        raise ChildError(f"{system} child failed (exit {proc.returncode}) after {elapsed:.0f} s; see stderr above")
    result = json.loads(lines[-1][len(RESULT_MARKER) :])
    result["child_wall_s"] = elapsed
    result["loadavg_1m_before"] = load_before
    result["loadavg_1m_after"] = os.getloadavg()[0]
    log.info("%s child finished in %.0f s", system, elapsed)
    return result


class ChildError(RuntimeError):
    pass


# ---- the record --------------------------------------------------------------------------------------------
def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine_info(device: str) -> dict[str, Any]:
    import psutil

    cpu_model, flags = platform.processor() or "?", ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu_model in ("?", "", platform.machine()):
                cpu_model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = line.split(":", 1)[1]
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu_model": cpu_model,
        "logical_cpus": os.cpu_count(),
        "physical_cpus": psutil.cpu_count(logical=False),
        "avx512f": " avx512f" in flags,
        "avx512_vnni": " avx512_vnni" in flags,
        "memory_total_gb": round(psutil.virtual_memory().total / 1e9, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    if device == "cuda":
        try:
            info["gpu"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            info["gpu"] = None
    return info


def versions() -> dict[str, Any]:
    out = {d: _version(d) for d in ("onnxruntime", "onnxruntime-gpu", "torch", "transformers", "numpy", "onnx")}
    out["musicgen-onnx"] = _version("musicgen-onnx")
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True
        ).stdout
        out["git_commit"] = commit.strip() + ("-dirty" if dirty.strip() else "")
    except OSError:
        out["git_commit"] = None
    return {k: v for k, v in out.items() if v is not None}


# ---- main --------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S", stream=sys.stderr
    )
    from musicgen_onnx.export.random_weights import canonical_name
    from musicgen_onnx.runtime.manifest import Manifest

    started = time.perf_counter()
    model = canonical_name(args.model)
    short = model.split("/", 1)[1]
    cache = (args.cache_dir or default_cache_dir()).expanduser().resolve()
    export_dir = cache / f"{short}-{args.precision}"
    export_report = ensure_export(args, model, export_dir)

    manifest = Manifest.load(export_dir)
    c = manifest.codebooks_per_channel
    frame_rate = manifest.audio.frame_rate
    steps = args.steps_only
    max_new_tokens = steps if steps is not None else round(args.duration * frame_rate) + c - 1
    if max_new_tokens > manifest.decoder.max_positions - 1:
        raise SystemExit(f"{max_new_tokens} steps exceed the model's {manifest.decoder.max_positions} positions")

    name = args.name or f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{short}-{args.precision}-{args.device}"
    config = {
        "model": model,
        "precision": args.precision,
        "device": args.device,
        "provider": "cuda" if args.device == "cuda" else "cpu",
        "threads": args.threads,
        "batches": args.batch,
        "duration_s": None if args.steps_only is not None else args.duration,
        "steps_only": args.steps_only,
        "max_new_tokens": max_new_tokens,
        "frames": max_new_tokens + 1 - c,
        "codebooks_per_channel": c,
        "guidance_scale": args.guidance_scale,
        "top_k": args.top_k,
        "top_p": 1.0,
        "temperature": 1.0,
        "seed": args.seed,
        "warmup_steps": args.warmup_steps,
        "export_dir": str(export_dir),
        "kv_cache": getattr(manifest.decoder, "kv_cache", None),
        "exporter": manifest.exporter,
    }
    record: dict[str, Any] = {
        "name": name,
        "created": now_iso(),
        "command": "python benchmarks/run.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine_info(args.device),
        "versions": versions(),
        "config": config,
        "export": export_report,
        "results": [],
        "errors": [],
    }
    base = {
        "model": model,
        "export_dir": str(export_dir),
        "device": args.device,
        "threads": args.threads,
        "seed": args.seed,
        "guidance_scale": args.guidance_scale,
        "top_k": args.top_k,
        "warmup_steps": args.warmup_steps,
        "max_new_tokens": max_new_tokens,
        "codebooks_per_channel": c,
        "profile_steps": args.profile,
        "cuda_graph": {"auto": None, "on": True, "off": False}[args.cuda_graph],
        "device_sampling": {"auto": None, "on": True, "off": False}[args.device_sampling],
    }
    systems = [s for s, skip in (("transformers", args.skip_transformers), ("ours", args.skip_ours)) if not skip]
    for batch in args.batch:
        for system in systems:
            log.info(
                "=== %s, batch %d, %d steps (%d frames), %d threads, %s ===",
                system,
                batch,
                max_new_tokens,
                max_new_tokens + 1 - c,
                args.threads,
                args.device,
            )
            if args.wait_idle > 0:
                busy = wait_idle(args.wait_idle)
                if busy >= 10.0:
                    log.warning("machine still %.0f%% busy after %.0f s; running anyway", busy, args.wait_idle)
            try:
                result = run_child(system, {**base, "batch": batch})
            except ChildError as exc:
                log.error("%s", exc)
                record["errors"].append({"system": system, "batch": batch, "error": str(exc)})
                continue
            report.derive(result, frame_rate)
            record["results"].append(result)
            other = result.get("other_cpu_percent") or 0.0
            if other > CONTENTION_WARN_PERCENT:
                log.warning(
                    "other processes used %.0f%% of the machine's CPU during the timed %s run: its numbers are "
                    "contaminated; rerun on a quiet machine",
                    other,
                    system,
                )

    record["ratios"] = report.ratios(record["results"])
    record["total_wall_s"] = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    png = args.out / f"{name}.png" if record["results"] else None
    if png is not None:
        record["plot"] = png.name
    text = json.dumps(record, indent=1) + "\n"
    (args.out / f"{name}.json").write_text(text)
    (args.out / "latest.json").write_text(text)
    if png is not None:  # after the record: a plotting failure must not lose the measurements
        report.plot(record, png)
    log.info("wrote %s/%s.json, latest.json%s", args.out, name, f", {record.get('plot')}" if "plot" in record else "")
    if record["results"]:
        print(report.table(record))
    return 1 if record["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
