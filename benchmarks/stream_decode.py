"""What streaming costs in EnCodec time, stateful graph against the overlap path, and the time to first audio.

    python benchmarks/stream_decode.py EXPORT_DIR [--seconds 10] [--chunk-seconds 1] [--threads 2] [--repeats 3]
        [--ttfa-runs 2] [--out benchmarks/results/stream-decode.json]

EXPORT_DIR must hold the stateful EnCodec graph (role ``encodec_stream``). For one clip of random codes
(``--seconds``, every channel of the export) it times, each the best of ``--repeats``:

- one-shot: ``Engine.decode_codes`` of the whole clip (what ``generate`` does);
- one-shot pieces: ``Engine.decode_codes`` of each chunk alone, no context (wrong at the seams: only the floor
  of what chunks cost, smaller calls being less efficient per frame);
- overlap: the stream decoder of exports without the stateful graph (re-decodes 45 frames per chunk);
- stateful: the stateful graph, every frame through the LSTM once, the post stack over a 2-frame overlap;

each stream stepped exactly as ``stream_chunks`` steps it (a chunk once its held-back frames are final), with the
SNR of the concatenated chunks against the one-shot decode. Then the time to first audio and to the last chunk
of ``MusicGen.stream(duration=--seconds, chunk_seconds=--chunk-seconds)`` with real generation (random weights
make noise, but the same amount of work), on the export as it is and on a copy of it without the stateful graph
(hard links, the manifest entry removed: what an export from before the graph looks like).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PROMPT = "80s synthwave with a driving bassline"


def without_stateful_graph(src: Path, dst: Path) -> Path:
    """A hard-linked copy of the export whose manifest lacks the stateful graph (as exports before it)."""
    data = json.loads((src / "manifest.json").read_text())
    spec = data["graphs"].pop("encodec_stream")
    data.pop("codec_stream", None)
    dropped = {spec["file"], *spec["external_data"]}
    dst.mkdir(parents=True, exist_ok=True)
    for path in src.iterdir():
        if path.name not in dropped and path.name != "manifest.json" and path.is_file():
            os.link(path, dst / path.name)
    for name in dropped:
        data["files"].pop(name, None)
    (dst / "manifest.json").write_text(json.dumps(data, indent=2))
    return dst


def stream_steps(total: int, chunk: int, held_back: int) -> list[int]:
    """The ``ready`` of every step ``stream_chunks`` makes for a clip of ``total`` frames (the last is final)."""
    steps, emitted = [], 0
    while emitted + chunk + held_back <= total - 1:
        steps.append(emitted + chunk + held_back)
        emitted += chunk
    return [*steps, total]


def time_stream(engine, codes: np.ndarray, chunk: int, stateful: bool, repeats: int) -> tuple[float, np.ndarray, int]:
    from musicgen_onnx.runtime.streaming import stream_decoder

    total = codes.shape[-1]
    best, audio, held_back = float("inf"), None, 0
    for _ in range(repeats):
        dec = stream_decoder(engine, stateful=stateful)
        held_back = dec.held_back
        t0 = time.perf_counter()
        parts = [dec.step(codes, r, final=r == total) for r in stream_steps(total, chunk, held_back)]
        best = min(best, time.perf_counter() - t0)
        audio = np.concatenate(parts, axis=-1)
    return best, audio, held_back


def time_first_audio(model_dir: Path, seconds: float, chunk_seconds: float, threads: int, runs: int) -> dict:
    from musicgen_onnx.runtime import MusicGen

    firsts, totals = [], []
    with MusicGen.load(model_dir, provider="cpu", threads=threads) as model:
        list(model.stream([PROMPT], duration=1.0, chunk_seconds=chunk_seconds, seed=0))  # warm-up (opens EnCodec)
        for run in range(runs):
            t0 = time.perf_counter()
            first = None
            for _chunk in model.stream([PROMPT], duration=seconds, chunk_seconds=chunk_seconds, seed=run):
                if first is None:
                    first = time.perf_counter() - t0
            firsts.append(first)
            totals.append(time.perf_counter() - t0)
    return {"first_audio_s": firsts, "whole_stream_s": totals}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("export_dir", type=Path)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--chunk-seconds", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ttfa-runs", type=int, default=2, help="streams per export for the time to first audio")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    from musicgen_onnx.runtime import MusicGen
    from musicgen_onnx.runtime.streaming import chunk_frames, snr_db

    record: dict = {"export": str(args.export_dir), "threads": args.threads, "loadavg_start": os.getloadavg()}
    with MusicGen.load(args.export_dir, provider="cpu", threads=args.threads) as model:
        engine = model.engine
        if not engine.has_stateful_codec:
            parser.error(f"{args.export_dir} has no stateful EnCodec graph: re-export it")
        audio_spec = engine.manifest.audio
        frames = round(args.seconds * audio_spec.frame_rate)
        chunk = chunk_frames(audio_spec.frame_rate, args.chunk_seconds)
        codes = np.random.default_rng(0).integers(
            0, audio_spec.codec_vocab_size, (1, engine.manifest.decoder.num_codebooks, frames)
        )
        engine.decode_codes(codes[..., :100])  # warm-up
        one_shot = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            ref = engine.decode_codes(codes)
            one_shot.append(time.perf_counter() - t0)
        record["one_shot_s"] = min(one_shot)
        pieces = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            for first in range(0, frames, chunk):
                engine.decode_codes(codes[..., first : first + chunk])
            pieces.append(time.perf_counter() - t0)
        record["one_shot_pieces_s"] = min(pieces)
        for name, stateful in (("overlap", False), ("stateful", True)):
            time_stream(engine, codes[..., :100], chunk, stateful, 1)  # warm-up (opens the stateful graph)
            seconds, audio, held_back = time_stream(engine, codes, chunk, stateful, args.repeats)
            dc = ref.mean(axis=-1, keepdims=True)
            record[name] = {
                "seconds": seconds,
                "vs_one_shot": seconds / record["one_shot_s"],
                "held_back_frames": held_back,
                "snr_db": snr_db(ref, audio),
                "snr_db_without_dc": snr_db(ref - dc, audio - dc),
                "max_abs_diff": float(np.abs(audio - ref).max()),
            }
    print(
        f"EnCodec, {args.seconds:g} s x {audio_spec.channels} channels, {args.chunk_seconds:g} s chunks, "
        f"{args.threads} threads: one-shot {record['one_shot_s']:.3f} s; one-shot per chunk, no context "
        f"{record['one_shot_pieces_s']:.3f} s = {record['one_shot_pieces_s'] / record['one_shot_s']:.2f}x"
    )
    for name in ("overlap", "stateful"):
        r = record[name]
        print(
            f"  {name:9s} {r['seconds']:.3f} s = {r['vs_one_shot']:.2f}x one-shot, held back {r['held_back_frames']} "
            f"frames, SNR {r['snr_db']:.1f} dB ({r['snr_db_without_dc']:.1f} without DC), max |diff| "
            f"{r['max_abs_diff']:.2g}"
        )
    if args.ttfa_runs:
        with tempfile.TemporaryDirectory(dir=args.export_dir.parent) as tmp:
            old = without_stateful_graph(args.export_dir, Path(tmp) / "old")
            for name, path in (("stream_stateful", args.export_dir), ("stream_overlap", old)):
                record[name] = time_first_audio(path, args.seconds, args.chunk_seconds, args.threads, args.ttfa_runs)
                r = record[name]
                print(
                    f"  stream({args.seconds:g} s, {args.chunk_seconds:g} s chunks), {name[7:]}: first audio "
                    f"{statistics.median(r['first_audio_s']):.2f} s, whole stream "
                    f"{statistics.median(r['whole_stream_s']):.2f} s "
                    f"(runs: {r['first_audio_s']}, {r['whole_stream_s']})"
                )
    record["loadavg_end"] = os.getloadavg()
    print(f"load average start {record['loadavg_start']}, end {record['loadavg_end']}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
