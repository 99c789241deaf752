"""Where a stream's first audio goes: text, cross K/V, decoder steps, EnCodec, and the rest (docs/design.md §8, §11).

    flock /tmp/musicgen-heavy.lock python benchmarks/first_audio.py EXPORT_DIR [EXPORT_DIR ...] \\
        [--duration 10] [--chunk 1] [--streams 5] [--threads 2] [--json OUT]

Each stream (batch 1, CFG, sampling, after a 1 s warm-up clip) runs with every onnxruntime session of the model
wrapped in a timer, so each ``run`` / ``run_with_iobinding`` up to the first chunk's arrival is attributed to
its graph: text encoder, cross K/V, the decoder's prefill and steps (the first two apart: they showed the cost
of a thread pool left spinning by the graph before, §11), and the stateful EnCodec call of the first chunk.
What is left of the wall time is Python, the queue and the hand-over between the decoder loop and the stream.
Prints the median of ``--streams`` runs per export; ``--json`` keeps every run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

TEXT = "80s synthwave with a driving bassline and bright arpeggios"


class TimedSession:
    """Forwards to an onnxruntime session and records (graph, start, end) of every run into ``log``."""

    def __init__(self, session: Any, graph: str, log: list[tuple[str, float, float]]) -> None:
        self._session, self._graph, self._log = session, graph, log

    def _timed(self, method: str, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return getattr(self._session, method)(*args, **kwargs)
        finally:
            self._log.append((self._graph, started, time.perf_counter()))

    def run(self, *args: Any, **kwargs: Any) -> Any:
        return self._timed("run", *args, **kwargs)

    def run_with_iobinding(self, *args: Any, **kwargs: Any) -> Any:
        return self._timed("run_with_iobinding", *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


def instrument(model, log: list[tuple[str, float, float]]) -> None:
    """Wrap the sessions the streaming path calls (the engine's, and the batching engine's decoder)."""
    if model.batcher is None:
        raise SystemExit(f"{model.model_dir} runs without the batching engine (concat KV cache): this benchmark times "
                         "the batching engine's stream path; use a static-cache export")  # fmt: skip
    engine = model.engine
    for attribute, graph in (("text_encoder", "text"), ("cross_kv", "cross_kv"), ("codec_stream", "encodec"),
                             ("codec_decoder", "encodec")):  # fmt: skip
        session = getattr(engine, attribute)
        if session is not None:
            setattr(engine, attribute, TimedSession(session, graph, log))
    model.batcher.decoder.session = TimedSession(model.batcher.decoder.session, "decoder", log)


def one_stream(model, log: list, duration: float, chunk: float, seed: int) -> dict[str, float]:
    log.clear()
    started = time.perf_counter()
    with model.stream(TEXT, duration=duration, chunk_seconds=chunk, seed=seed) as chunks:
        next(iter(chunks))
        first = time.perf_counter()
        runs = [(graph, a, b) for graph, a, b in log if b <= first]
    decoder = [b - a for graph, a, b in runs if graph == "decoder"]
    parts = {
        "text_ms": sum(b - a for g, a, b in runs if g == "text"),
        "cross_kv_ms": sum(b - a for g, a, b in runs if g == "cross_kv"),
        "decoder_first_two_ms": sum(decoder[:2]),
        "decoder_rest_ms": sum(decoder[2:]),
        "encodec_ms": sum(b - a for g, a, b in runs if g == "encodec"),
    }
    parts = {k: 1000 * v for k, v in parts.items()}
    out = {"first_audio_ms": 1000 * (first - started), "decoder_calls": len(decoder), **parts}
    out["decoder_step_median_ms"] = 1000 * statistics.median(decoder[2:]) if len(decoder) > 2 else 0.0
    out["other_ms"] = out["first_audio_ms"] - sum(parts.values())
    return {k: round(v, 1) if isinstance(v, float) else v for k, v in out.items()}


def measure(model_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    from musicgen_onnx.runtime import MusicGen

    log: list[tuple[str, float, float]] = []
    with MusicGen.load(model_dir, provider="cpu", threads=args.threads) as model:
        model.generate_detailed(TEXT, duration=1.0, seed=99)  # warm-up: allocations, first-run kernels
        instrument(model, log)
        runs = [one_stream(model, log, args.duration, args.chunk, args.seed + i) for i in range(args.streams)]
    median = {k: round(statistics.median(r[k] for r in runs), 1) for k in runs[0]}
    return {"export": str(model_dir), "runs": runs, "median": median}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("exports", nargs="+", type=Path)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--chunk", type=float, default=1.0, help="stream chunk seconds")
    p.add_argument("--streams", type=int, default=5, help="streams per export (the table shows their median)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if args.streams < 1:
        p.error(f"--streams must be at least 1, got {args.streams}")
    records = [measure(d, args) for d in args.exports]
    columns = ["first_audio_ms", "text_ms", "cross_kv_ms", "decoder_calls", "decoder_first_two_ms",
               "decoder_rest_ms", "decoder_step_median_ms", "encodec_ms", "other_ms"]  # fmt: skip
    print("| export | " + " | ".join(c.replace("_ms", " (ms)").replace("_", " ") for c in columns) + " |")
    print("| --- |" + " --- |" * len(columns))
    for r in records:
        print(f"| {Path(r['export']).name} | " + " | ".join(str(r["median"][c]) for c in columns) + " |")
    if args.json:
        args.json.write_text(json.dumps({"threads": args.threads, "streams": args.streams, "exports": records},
                                        indent=2) + "\n")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
