"""Real time on this CPU? Whole 10 s clips and 1 s-chunk streams, per export, side by side (docs/design.md §8).

    flock /tmp/musicgen-heavy.lock python benchmarks/realtime.py PRESET_DIR INT8_DIR FP32_DIR \\
        [--duration 10] [--chunk 1] [--threads 2] [--transformers-steps 150] [--json OUT]

For each export (batch 1, classifier-free guidance, sampling, 2 threads), after a 1 s warm-up clip:

- **whole clip**: wall time of ``generate_detailed(duration=10)`` from the call to the audio, the real-time factor
  (wall / duration), median ms/step, and the text-encode / audio-decode parts. Two clips in a row: the table shows
  the second (what a server that has run one such request, or ``warm_up_codec`` at start, gives every request);
  the record keeps the first too (``whole_first``: a one-off CLI run, whose EnCodec decode pays for fresh
  activation memory, docs/design.md §10);
- **stream**: ``stream(duration=10, chunk_seconds=1)``: each chunk's arrival time after the call, against its
  playback deadline. Playback starts when the first chunk arrives, so chunk i is due when the audio before it has
  played: ``first_arrival + chunk.start``. ``late_s`` > 0 is a buffering pause a listener hears. With
  ``--streams N`` the stream runs N times in a row (same seed): the record keeps the first run's chunks and
  every run's first audio and pauses; the table shows the first audio's median and range (one run's first
  audio varies by ~0.1-0.2 s on a 2-vCPU VM) and every run's pauses;
- **floor**: the bytes a decoder step must read (the decoder's weights, embedding tables excepted, plus the KV
  cache of both CFG rows at the clip's mean position) over the read bandwidth measured here
  (``measure_common.read_bandwidth``, the probe every floor in benchmarks/ uses): the step time no kernel can
  beat on this machine, and the clip time it implies, next to what is reached.

transformers' own ``generate`` (fp32, same random weights, ``benchmarks/measure.py transformers``) is timed in the
same run for ``--transformers-steps`` steps; its clip time is projected as steps x median ms/step (marked so).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from measure_common import cpu_description, decoder_weight_bytes, read_bandwidth

HERE = Path(__file__).resolve().parent
TEXT = "80s synthwave with a driving bassline and bright arpeggios"


class OtherCpu:
    """Share of the machine's CPU time used by other processes while the block runs (contention check)."""

    def __enter__(self) -> OtherCpu:
        self.start = (_busy_seconds(), _own_seconds(), time.perf_counter())
        return self

    def __exit__(self, *exc_info: object) -> None:
        end = (_busy_seconds(), _own_seconds(), time.perf_counter())
        busy, own, wall = (b - a for a, b in zip(self.start, end, strict=True))
        self.percent = round(100 * max(0.0, busy - own) / (wall * (os.cpu_count() or 1)), 1)


def _busy_seconds() -> float:
    with open("/proc/stat") as handle:
        fields = [int(x) for x in handle.readline().split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait


def _own_seconds() -> float:
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def _cache_bytes_per_position(manifest) -> int:
    """K and V of every layer, one position, both CFG rows, at the cache's element size."""
    d = manifest.decoder
    kind = str(getattr(d.kv_cache, "value", d.kv_cache))
    element = 1 if "int8" in kind else 2 if ("fp16" in kind or manifest.precision == "fp16") else 4
    return 2 * d.num_layers * 2 * d.num_heads * d.head_dim * element


def whole_clip(model, duration: float, seed: int) -> dict[str, Any]:
    started = time.perf_counter()
    result = model.generate_detailed(TEXT, duration=duration, seed=seed)
    wall = time.perf_counter() - started
    steps = [1000 * t for t in result.step_times[1:]]
    return {
        "wall_s": round(wall, 2),
        "rtf": round(wall / duration, 3),
        "steps": len(result.step_times),
        "prefill_ms": round(1000 * result.step_times[0], 1),
        "step_median_ms": round(statistics.median(steps), 2),
        "step_mean_ms": round(statistics.fmean(steps), 2),
        "decode_loop_s": round(sum(result.step_times), 2),
        "timings_s": {k: round(v, 3) for k, v in result.timings.items()},
        "audio_s": round(result.audio.shape[-1] / result.sampling_rate, 3),
    }


def stream(model, duration: float, chunk: float, seed: int) -> dict[str, Any]:
    started = time.perf_counter()
    rows = []
    with model.stream(TEXT, duration=duration, chunk_seconds=chunk, seed=seed) as chunks:
        for piece in chunks:
            rows.append({"start_s": round(piece.start, 3), "seconds": round(piece.duration, 3),
                         "arrived_s": round(time.perf_counter() - started, 3)})  # fmt: skip
    # a player that starts with the first chunk and, when the next one is not there yet, pauses until it is
    played_until = rows[0]["arrived_s"]
    for row in rows:
        row["deadline_s"] = round(played_until, 3)  # when the audio before this chunk has finished playing
        row["late_s"] = round(max(0.0, row["arrived_s"] - played_until), 3)
        played_until = max(played_until, row["arrived_s"]) + row["seconds"]
    rows[0]["late_s"] = 0.0  # the first chunk is the start-up wait (first_audio_s), not a pause
    return {
        "first_audio_s": rows[0]["arrived_s"],
        "total_s": rows[-1]["arrived_s"],
        "chunks": rows,
        "pauses": sum(row["late_s"] > 0 for row in rows),
        "paused_s": round(sum(row["late_s"] for row in rows), 3),
        "every_chunk_in_time": all(row["late_s"] == 0 for row in rows),
    }


def measure_export(model_dir: Path, args: argparse.Namespace, bandwidth: float) -> dict[str, Any]:
    from musicgen_onnx.runtime import MusicGen

    with MusicGen.load(model_dir, provider="cpu", threads=args.threads) as model:
        manifest = model.manifest
        model.generate_detailed(TEXT, duration=1.0, seed=99)  # warm-up: allocations, first-run kernels
        whole_first = whole_clip(model, args.duration, args.seed)  # the process's first clip this long
        with OtherCpu() as whole_other:
            whole = whole_clip(model, args.duration, args.seed)
        with OtherCpu() as stream_other:
            runs = [stream(model, args.duration, args.chunk, args.seed) for _ in range(args.streams)]
        streamed = runs[0]
        streamed["first_audio_runs_s"] = [run["first_audio_s"] for run in runs]
        streamed["pauses_runs"] = [run["pauses"] for run in runs]
        streamed["paused_s_runs"] = [run["paused_s"] for run in runs]
        whole["other_cpu_percent"], streamed["other_cpu_percent"] = whole_other.percent, stream_other.percent
        steps = whole["steps"]
    weights = decoder_weight_bytes(model_dir / manifest.graphs["decoder"].file)
    per_position = _cache_bytes_per_position(manifest)
    mean_cache = per_position * steps / 2  # the cache grows linearly: mean position = steps / 2
    floor_step_s = (weights + mean_cache) / bandwidth
    return {
        "export": str(model_dir),
        "precision": manifest.precision,
        "precision_plan": getattr(manifest, "precision_plan", {}),
        "kv_cache": str(getattr(manifest.decoder.kv_cache, "value", manifest.decoder.kv_cache)),
        "streaming_decoder": "stateful" if "encodec_stream" in manifest.graphs else "overlap",
        "codec_lstm": manifest.codec_lstm_format(),
        "whole": whole,
        "whole_first": whole_first,
        "stream": streamed,
        "floor": {
            "decoder_weight_bytes": weights,
            "cache_bytes_per_position": per_position,
            "mean_step_bytes": int(weights + mean_cache),
            "step_ms": round(1000 * floor_step_s, 2),
            "decode_loop_s": round(steps * floor_step_s, 2),
        },
    }


def measure_transformers(args: argparse.Namespace, export_dir: Path) -> dict[str, Any]:
    """transformers' fp32 generate for ``--transformers-steps`` steps in its own process (benchmarks/measure.py)."""
    from musicgen_onnx.runtime.manifest import Manifest

    manifest = Manifest.load(export_dir)
    spec = {
        "model": manifest.source, "export_dir": str(export_dir), "device": "cpu", "threads": args.threads,
        "seed": args.seed, "guidance_scale": manifest.generation.guidance_scale, "top_k": manifest.generation.top_k,
        "warmup_steps": 4, "max_new_tokens": args.transformers_steps, "batch": 1,
        "codebooks_per_channel": manifest.codebooks_per_channel, "profile_steps": 0,
    }  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    cmd = [sys.executable, str(HERE / "measure.py"), "transformers", "--spec", json.dumps(spec)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env, cwd=HERE.parent, check=True)
    line = next(ln for ln in reversed(proc.stdout.splitlines()) if ln.startswith("BENCH_RESULT"))
    result = json.loads(line.split(" ", 1)[1])
    steps = round(args.duration * manifest.audio.frame_rate) + manifest.codebooks_per_channel - 1
    median = result["step_median_ms"]
    return {
        "label": result["label"],
        "steps_timed": args.transformers_steps,
        "step_median_ms": round(median, 2),
        "projected_clip_s": round(steps * median / 1000, 1),
        "note": f"projected: {steps} steps x the median step (the last step's EnCodec decode not included)",
    }


def _first_audio(stream_record: dict[str, Any]) -> str:
    """The first audio of one stream run, or the median and range of several."""
    runs = stream_record.get("first_audio_runs_s") or [stream_record["first_audio_s"]]
    if len(runs) == 1:
        return f"{runs[0]:.2f} s"
    return f"{statistics.median(runs):.2f} s ({min(runs):.2f}-{max(runs):.2f})"


def _pauses(stream_record: dict[str, Any]) -> str:
    """Buffering pauses (count and seconds) of every stream run: the acceptance counts each stream, not the first."""
    counts = stream_record.get("pauses_runs") or [stream_record["pauses"]]
    if len(counts) == 1:
        return f"{counts[0]} ({stream_record['paused_s']:.2f} s)"
    seconds = stream_record.get("paused_s_runs")  # records before 2026-12-06 kept only the counts
    if seconds:
        per_run = " / ".join(f"{n} ({t:.2f} s)" for n, t in zip(counts, seconds, strict=True))
    else:
        per_run = " / ".join(str(n) for n in counts)
    return f"{per_run}; {sum(n == 0 for n in counts)} of {len(counts)} without a pause"


def _first_clip(record: dict[str, Any]) -> str:
    first = record["whole_first"]
    return f"{first['wall_s']:.2f} s (EnCodec {first['timings_s']['audio_decode']:.2f} s)"


def table(records: list[dict[str, Any]], transformers: dict[str, Any] | None, duration: float) -> str:
    base = records[-1]["whole"]["wall_s"]
    lines = [
        f"| export | KV cache | {duration:g} s clip wall | RTF | first clip of the process | median step "
        f"| vs {Path(records[-1]['export']).name} | floor step | floor loop | first audio | stream pauses "
        "| other CPU % |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in records:
        w, s, f = r["whole"], r["stream"], r["floor"]
        lines.append(
            f"| {Path(r['export']).name} ({r['precision']}) | {r['kv_cache']} | {w['wall_s']:.2f} s | "
            f"{w['rtf']:.2f} | {_first_clip(r)} | {w['step_median_ms']:.1f} ms | {base / w['wall_s']:.2f}x | "
            f"{f['step_ms']:.1f} ms | "
            f"{f['decode_loop_s']:.1f} s | {_first_audio(s)} | {_pauses(s)} | "
            f"{w['other_cpu_percent']:g} / {s['other_cpu_percent']:g} |"
        )
    if transformers and "error" not in transformers:
        t = transformers
        lines.append(
            f"| transformers fp32 | - | {t['projected_clip_s']:.1f} s (projected) | "
            f"{t['projected_clip_s'] / duration:.2f} | | {t['step_median_ms']:.1f} ms | "
            f"{base / t['projected_clip_s']:.2f}x | | | | | |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("exports", nargs="+", type=Path, help="export dirs; the ratio column is against the last")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--chunk", type=float, default=1.0, help="stream chunk seconds")
    p.add_argument("--streams", type=int, default=1, help="stream runs per export (first audio: median, range)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--transformers-steps", type=int, default=150, help="0: skip transformers")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if args.streams < 1:
        p.error(f"--streams must be at least 1, got {args.streams}")
    load_before = os.getloadavg()
    bandwidth = read_bandwidth(args.threads)
    print(f"read bandwidth ({args.threads} threads): {bandwidth / 1e9:.1f} GB/s", file=sys.stderr, flush=True)
    records = []
    for export in args.exports:
        records.append(measure_export(export, args, bandwidth))
        r = records[-1]
        print(f"{export}: {r['whole']['wall_s']} s whole, first audio {_first_audio(r['stream'])}, "
              f"{r['stream']['pauses']} pauses", file=sys.stderr, flush=True)  # fmt: skip
    transformers = None
    if args.transformers_steps:
        try:
            transformers = measure_transformers(args, args.exports[-1])
        except (subprocess.CalledProcessError, StopIteration, KeyError) as exc:  # keep the runs measured so far
            print(f"transformers: not measured ({exc!r})", file=sys.stderr)
    out = {
        "duration_s": args.duration,
        "chunk_s": args.chunk,
        "threads": args.threads,
        "read_bandwidth_gbs": round(bandwidth / 1e9, 2),
        **cpu_description(),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "exports": records,
        "transformers": transformers,
    }
    print(table(records, transformers, args.duration))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
