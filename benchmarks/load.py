"""Load test of the continuous-batching engine against sequential generation and static batching.

    python benchmarks/load.py EXPORT_DIR --clients 4 --requests 16 [--threads 2] [--out results/load-int8.json]
    python benchmarks/load.py EXPORT_DIR --rate 0.3 --requests 16           # open loop: Poisson arrivals
    python benchmarks/load.py MELODY_EXPORT_DIR --melody --modes engine sequential   # melody checkpoints

Requests have durations drawn uniformly from --min-seconds..--max-seconds (2-15 s) and texts from a fixed
list, from a seeded generator, so every mode serves the same requests. Each request is streamed (1 s chunks),
as a server would; time to first audio is when its first chunk arrives. With ``--no-stream`` each request
waits for its whole clip (``generate``, one EnCodec decode per clip); first audio is then the whole clip.
With ``--melody`` (melody checkpoints) every request also gets its own melody: a synthetic tune of
--melody-seconds, four notes that differ per request, at 44.1 kHz (resampled by the runtime).

Arrivals: ``--clients N`` is a closed loop (N clients, each sends its next request when the last one is
done); ``--rate R`` an open loop (Poisson arrivals, R requests per second, each handled by its own thread).

Modes, one model load each, run one after the other:
* engine: every request is submitted as it arrives and joins the shared decoder batch (max_batch = --slots).
* sequential: one request at a time, in arrival order (the engine with one slot: the others wait).
* static: a batch is formed from the requests waiting when the decoder is free (up to --slots) and run as one
  multi-prompt request to its longest duration; each request's audio is cut to its own length.

Reported per mode: throughput (seconds of audio per wall second), latency p50 / p95 (arrival -> last chunk),
time to first audio p50 / p95, wall time. Progress goes to stderr; the table to stdout; --out writes JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger("musicgen_onnx.bench")

PROMPTS = [
    "lo-fi hip hop beat with warm piano",
    "epic orchestral trailer music with drums",
    "80s synthwave with a driving bassline",
    "acoustic folk guitar and soft vocals humming",
    "minimal techno with deep kick",
    "jazz trio, brushed drums, upright bass",
]


@dataclass
class Request:
    index: int
    text: str
    duration: float
    melody_notes: tuple[float, ...] | None = None  # Hz, one per 0.4 s, cycling (``--melody``)
    melody_seconds: float = 0.0
    arrival: float = 0.0  # seconds after the start of the run
    first_audio: float | None = None
    done: float | None = None
    samples: int = 0


MELODY_RATE = 44100


def make_requests(n: int, low: float, high: float, seed: int, melody_seconds: float | None = None) -> list[Request]:
    rng = np.random.default_rng(seed)
    durations = np.round(rng.uniform(low, high, n), 2)
    requests = [Request(i, PROMPTS[i % len(PROMPTS)], float(d)) for i, d in enumerate(durations)]
    if melody_seconds:  # four notes of the C major scale (C4-B4) per request, from the same generator
        scale = (261.63, 293.66, 329.63, 349.23, 392.0, 440.0, 493.88)
        for req in requests:
            req.melody_notes, req.melody_seconds = tuple(float(f) for f in rng.choice(scale, 4)), melody_seconds
    return requests


def melody_audio(notes: tuple[float, ...], seconds: float) -> np.ndarray:
    """A mono tune at MELODY_RATE: one note per 0.4 s, cycling through ``notes``."""
    t = np.arange(round(seconds * MELODY_RATE)) / MELODY_RATE
    freq = np.asarray(notes)[(t / 0.4).astype(int) % len(notes)]
    return (0.4 * np.sin(2 * np.pi * np.cumsum(freq) / MELODY_RATE)).astype(np.float32)


def conditioning(reqs: list[Request]) -> dict:
    """The keyword arguments that condition ``reqs`` beyond their texts: their melodies, if any."""
    if reqs[0].melody_notes is None:
        return {}
    clips = [melody_audio(r.melody_notes, r.melody_seconds) for r in reqs]
    return {"melody": clips if len(clips) > 1 else clips[0], "melody_sample_rate": MELODY_RATE}


def _consume(stream, req: Request, start: float) -> None:
    with stream as chunks:
        for chunk in chunks:
            if req.first_audio is None:
                req.first_audio = time.perf_counter() - start
            req.samples += chunk.audio.shape[-1]
    req.done = time.perf_counter() - start


def _whole(model, req: Request, start: float) -> None:
    audio = model.generate(req.text, duration=req.duration, seed=req.index, **conditioning([req]))
    req.done = req.first_audio = time.perf_counter() - start
    req.samples = audio.shape[-1]


def run_engine(model, requests: list[Request], clients: int | None, rate: float | None, seed: int, stream: bool):
    start = time.perf_counter()

    def serve(req: Request) -> None:
        req.arrival = time.perf_counter() - start
        if stream:
            _consume(model.stream(req.text, duration=req.duration, seed=req.index, **conditioning([req])), req, start)
        else:
            _whole(model, req, start)

    _drive(requests, clients, rate, seed, serve, start)
    return time.perf_counter() - start


def run_static(model, requests, clients: int | None, rate: float | None, seed: int, slots: int, stream: bool):
    """Static batching: a collector thread forms batches from the waiting requests and runs each to its end."""
    start = time.perf_counter()
    waiting: list[Request] = []
    finished: dict[int, threading.Event] = {r.index: threading.Event() for r in requests}
    cond = threading.Condition()
    stop = threading.Event()

    def collector() -> None:
        while not stop.is_set():
            with cond:
                cond.wait_for(lambda: waiting or stop.is_set(), timeout=0.5)
            time.sleep(0.05)  # a short batching window: requests arriving together share the batch
            with cond:
                batch, waiting[:] = waiting[:slots], waiting[slots:]
            if not batch:
                continue
            longest = max(r.duration for r in batch)
            if not stream:  # the whole batch to its longest, then each request's clip cut to its own length
                audio = model.generate(
                    [r.text for r in batch], duration=longest, seed=batch[0].index, **conditioning(batch)
                )
                now = time.perf_counter() - start
                for req in batch:
                    req.samples = min(audio.shape[-1], round(req.duration * model.sampling_rate))
                    req.first_audio = req.done = now
                    finished[req.index].set()
                continue
            texts = [r.text for r in batch]
            with model.stream(texts, duration=longest, seed=batch[0].index, **conditioning(batch)) as chunks:
                for chunk in chunks:
                    now = time.perf_counter() - start
                    for row, req in enumerate(batch):
                        left = round(req.duration * model.sampling_rate) - req.samples
                        if left > 0:
                            req.samples += min(left, chunk.audio[row].shape[-1])
                            if req.first_audio is None:
                                req.first_audio = now
                            if req.samples >= round(req.duration * model.sampling_rate):
                                req.done = now
                                finished[req.index].set()
            for req in batch:  # the run ended: everyone in it is done
                if req.done is None:
                    req.done = time.perf_counter() - start
                finished[req.index].set()

    worker = threading.Thread(target=collector, daemon=True)
    worker.start()

    def serve(req: Request) -> None:
        req.arrival = time.perf_counter() - start
        with cond:
            waiting.append(req)
            cond.notify_all()
        finished[req.index].wait(timeout=3600)

    try:
        _drive(requests, clients, rate, seed, serve, start)
    finally:
        stop.set()
        with cond:
            cond.notify_all()
        worker.join(timeout=60)
    return time.perf_counter() - start


def _drive(requests, clients, rate, seed, serve, start) -> None:
    """Closed loop (``clients`` threads taking the next request when done) or Poisson arrivals (``rate``)."""
    if clients:
        queue = list(requests)
        lock = threading.Lock()

        def client() -> None:
            while True:
                with lock:
                    if not queue:
                        return
                    req = queue.pop(0)
                serve(req)

        threads = [threading.Thread(target=client) for _ in range(clients)]
    else:
        gaps = np.random.default_rng(seed + 1).exponential(1.0 / rate, len(requests))
        arrivals = np.cumsum(gaps) - gaps[0]

        def arrive(req: Request, at: float) -> None:
            delay = at - (time.perf_counter() - start)
            if delay > 0:
                time.sleep(delay)
            serve(req)

        threads = [threading.Thread(target=arrive, args=(r, a)) for r, a in zip(requests, arrivals, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=3600)


def summarise(mode: str, requests: list[Request], wall: float, sampling_rate: int) -> dict:
    latency = np.array([r.done - r.arrival for r in requests])
    ttfa = np.array([r.first_audio - r.arrival for r in requests])
    audio = sum(r.samples for r in requests) / sampling_rate
    return {
        "mode": mode,
        "requests": len(requests),
        "audio_seconds": audio,
        "wall_s": wall,
        "throughput": audio / wall,
        "latency_p50": float(np.percentile(latency, 50)),
        "latency_p95": float(np.percentile(latency, 95)),
        "ttfa_p50": float(np.percentile(ttfa, 50)),
        "ttfa_p95": float(np.percentile(ttfa, 95)),
        "per_request": [asdict(r) for r in requests],
    }


def plot(rows: list[dict], title: str, path: Path) -> None:
    """Throughput per mode, and each request's latency and time to first audio against its duration."""
    try:
        import matplotlib
    except ImportError as exc:
        raise SystemExit("--plot needs matplotlib: pip install 'musicgen-onnx[bench]'") from exc

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    modes = [r["mode"] for r in rows]
    ax1.bar(modes, [r["throughput"] for r in rows], color=["C0", "C1", "C2"][: len(rows)])
    ax1.set_ylabel("seconds of audio per wall second")
    ax1.set_title("throughput")
    for i, r in enumerate(rows):
        reqs = r["per_request"]
        durations = [q["duration"] for q in reqs]
        ax2.scatter(durations, [q["done"] - q["arrival"] for q in reqs], color=f"C{i}", label=f"{r['mode']} latency")
        ax2.scatter(
            durations, [q["first_audio"] - q["arrival"] for q in reqs], color=f"C{i}", marker="x", label="first audio"
        )
    ax2.set_xlabel("requested duration (s)")
    ax2.set_ylabel("seconds after arrival")
    ax2.set_title("latency (dots) and time to first audio (x)")
    ax2.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("export_dir", type=Path)
    arrivals = parser.add_mutually_exclusive_group()
    arrivals.add_argument("--clients", type=int, help="closed loop: this many concurrent clients (default 4)")
    arrivals.add_argument("--rate", type=float, help="open loop: Poisson arrivals, requests per second")
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--slots", type=int, default=4, help="max_batch of the engine and static batches")
    parser.add_argument("--min-seconds", type=float, default=2.0)
    parser.add_argument("--max-seconds", type=float, default=15.0)
    parser.add_argument("--threads", type=int, help="onnxruntime threads (default: the usable CPUs)")
    parser.add_argument("--provider", default="cpu", choices=("cpu", "cuda", "auto"))
    parser.add_argument("--modes", nargs="+", default=["engine", "sequential", "static"])
    parser.add_argument("--no-spin", action="store_true", help="load with allow_spinning=False")
    parser.add_argument("--no-stream", action="store_true", help="requests wait for the whole clip (generate)")
    parser.add_argument("--melody", action="store_true", help="melody checkpoints: each request gets its own tune")
    parser.add_argument("--melody-seconds", type=float, default=10.0, help="length of each request's tune")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="JSON record")
    parser.add_argument("--plot", type=Path, help="PNG: throughput, latency and time to first audio per mode")
    args = parser.parse_args(argv)
    if args.clients is None and args.rate is None:
        args.clients = 4
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)

    from musicgen_onnx.runtime import MusicGen

    rows = []
    for mode in args.modes:
        slots = 1 if mode == "sequential" else args.slots
        melody = args.melody_seconds if args.melody else None
        requests = make_requests(args.requests, args.min_seconds, args.max_seconds, args.seed, melody)
        with MusicGen.load(
            args.export_dir,
            provider=args.provider,
            threads=args.threads,
            allow_spinning=False if args.no_spin else None,
            verify=False,
            max_batch=slots,
            max_queued=args.requests,
        ) as model:
            model.generate("warm-up", max_new_tokens=10)
            log.info(
                "%s: %d requests, %s",
                mode,
                len(requests),
                f"{args.clients} clients" if args.clients else f"rate {args.rate}/s",
            )
            if mode == "static":
                wall = run_static(model, requests, args.clients, args.rate, args.seed, args.slots, not args.no_stream)
            else:
                wall = run_engine(model, requests, args.clients, args.rate, args.seed, not args.no_stream)
            rows.append(summarise(mode, requests, wall, model.sampling_rate))
            log.info("%s: %.1f s of audio in %.1f s", mode, rows[-1]["audio_seconds"], wall)
    load = f"{args.clients} clients (closed loop)" if args.clients else f"Poisson {args.rate} req/s"
    how = "whole clips (generate)" if args.no_stream else "streamed in 1 s chunks"
    spin = "allow_spinning=False" if args.no_spin else "spinning (onnxruntime default)"
    print(f"{args.requests} requests of {args.min_seconds:g}-{args.max_seconds:g} s, {load}, slots {args.slots}")
    melody = f", a {args.melody_seconds:g} s melody per request" if args.melody else ""
    print(f"{how}, {spin}, {args.threads or 'usable CPUs'} onnxruntime threads{melody}")
    print("| mode | throughput (audio s/s) | latency p50 s | p95 s | first audio p50 s | p95 s | wall s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['mode']} | {r['throughput']:.2f} | {r['latency_p50']:.1f} | {r['latency_p95']:.1f} | "
            f"{r['ttfa_p50']:.1f} | {r['ttfa_p95']:.1f} | {r['wall_s']:.1f} |"
        )
    # the record first: a plotting failure (matplotlib missing) must not lose minutes of measurements
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        args.out.write_text(json.dumps({"settings": settings, "modes": rows}, indent=1) + "\n")
    if args.plot:
        plot(
            rows,
            f"{args.export_dir.name}: {args.requests} requests of {args.min_seconds:g}-{args.max_seconds:g} s, {load}",
            args.plot,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
