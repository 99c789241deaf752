"""Load test of the served app: throughput, latency and time to first audio against concurrency.

Closed loop: at concurrency c, c asyncio clients each send streamed requests back to back until the level's
request count is done. Time to first audio = first PCM bytes after the WAV header. Either against a running
server (``--url``) or one this script starts on 127.0.0.1 (``--model-dir``, Ray Serve in this process).

    python benchmarks/serve_load.py --model-dir /tmp/eng-int8 --levels 1 2 4 8 \\
        --out benchmarks/results/serve-load-int8.json --plot benchmarks/results/serve-load-int8.png
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from pathlib import Path

import aiohttp

HEADER = 44  # WAV header of a streamed response


async def one_request(session: aiohttp.ClientSession, url: str, body: dict) -> dict:
    t0 = time.perf_counter()
    first = None
    size = 0
    async with session.post(f"{url}/v1/audio/generations", json=body) as r:
        status = r.status
        if status == 200:
            async for piece in r.content.iter_any():
                size += len(piece)
                if first is None and size > HEADER:
                    first = time.perf_counter() - t0
            channels = int(r.headers["X-Audio-Channels"])
            rate = int(r.headers["X-Audio-Sample-Rate"])
        else:
            await r.read()
    latency = time.perf_counter() - t0
    audio_s = (size - HEADER) / (2 * channels * rate) if status == 200 else 0.0
    return {"status": status, "latency": latency, "first_audio": first, "audio_s": audio_s}


async def run_level(url: str, concurrency: int, requests: int, durations: list[float], seed: int) -> dict:
    rng = random.Random(seed)
    bodies = [
        {
            "input": f"request {i}: lo-fi beat with warm piano",
            "duration": rng.choice(durations),
            "seed": i,
            "stream": True,
        }
        for i in range(requests)
    ]
    queue: asyncio.Queue = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    results: list[dict] = []
    timeout = aiohttp.ClientTimeout(total=3600)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def client() -> None:
            while not queue.empty():
                results.append(await one_request(session, url, queue.get_nowait()))

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    ok = [r for r in results if r["status"] == 200]
    lat = sorted(r["latency"] for r in ok)
    ttfa = sorted(r["first_audio"] for r in ok if r["first_audio"] is not None)
    return {
        "concurrency": concurrency,
        "requests": requests,
        "ok": len(ok),
        "statuses": sorted({r["status"] for r in results}),
        "audio_s": sum(r["audio_s"] for r in ok),
        "wall_s": wall,
        "throughput": sum(r["audio_s"] for r in ok) / wall,
        "latency_p50": _pct(lat, 50),
        "latency_p95": _pct(lat, 95),
        "first_audio_p50": _pct(ttfa, 50),
        "first_audio_p95": _pct(ttfa, 95),
    }


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def start_server(model_dir: str, threads: int, max_batch: int, port: int, provider: str) -> tuple[str, dict]:
    import ray
    import requests
    from musicgen_onnx.serving.deployment import build_app
    from ray import serve

    ray.init(include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    t0 = time.perf_counter()
    serve.run(
        build_app({"model_dir": model_dir, "threads": threads, "max_batch": max_batch, "provider": provider}),
        name="musicgen",
        route_prefix="/",
    )
    url = f"http://127.0.0.1:{port}"
    health = requests.get(f"{url}/healthz", timeout=60).json()
    return url, {"replica_ready_s": time.perf_counter() - t0, "idle_replica": health}


def table(levels: list[dict]) -> str:
    rows = [
        "| concurrency | requests | throughput (audio s/s) | latency p50 s | p95 s | first audio p50 s | p95 s "
        "| wall s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in levels:
        rows.append(
            f"| {r['concurrency']} | {r['ok']}/{r['requests']} | {r['throughput']:.2f} | {r['latency_p50']:.1f} | "
            f"{r['latency_p95']:.1f} | {r['first_audio_p50']:.1f} | {r['first_audio_p95']:.1f} | {r['wall_s']:.0f} |"
        )
    return "\n".join(rows)


def plot(levels: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = [r["concurrency"] for r in levels]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(c, [r["throughput"] for r in levels], "o-")
    a.set(xlabel="concurrent clients", ylabel="audio seconds per second", title="throughput", xscale="log", xticks=c)
    a.set_xticklabels([str(x) for x in c])
    for key, label in (
        ("latency_p50", "latency p50"),
        ("latency_p95", "latency p95"),
        ("first_audio_p50", "first audio p50"),
    ):
        b.plot(c, [r[key] for r in levels], "o-", label=label)
    b.set(xlabel="concurrent clients", ylabel="seconds", title="latency", xscale="log", xticks=c)
    b.set_xticklabels([str(x) for x in c])
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="a running server, e.g. http://127.0.0.1:8000")
    where.add_argument("--model-dir", help="start a server for this export on 127.0.0.1 (Ray Serve, this process)")
    p.add_argument("--levels", type=int, nargs="+", default=[1, 2, 4, 8], help="concurrency levels")
    p.add_argument("--requests-per-client", type=int, default=2, help="requests per client at each level (min 3)")
    p.add_argument("--durations", type=float, nargs="+", default=[4.0, 6.0], help="clip lengths drawn per request")
    p.add_argument("--threads", type=int, default=2, help="with --model-dir: replica threads")
    p.add_argument("--max-batch", type=int, default=4, help="with --model-dir: engine slots")
    p.add_argument("--provider", default="auto", help="with --model-dir: auto, cpu or cuda")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--out", type=Path, help="write the results as JSON")
    p.add_argument("--plot", type=Path, help="write a PNG plot (needs matplotlib)")
    p.add_argument("--metrics-out", type=Path, help="after the levels, save the server's GET /metrics text here")
    args = p.parse_args(argv)
    meta: dict = {"argv": sys.argv[1:]}
    url = args.url
    if url is None:
        url, started = start_server(args.model_dir, args.threads, args.max_batch, args.port, args.provider)
        meta.update(started)
        print(f"server ready in {started['replica_ready_s']:.1f} s; idle replica: {started['idle_replica']}")
    levels = []
    for c in args.levels:
        n = max(3, c * args.requests_per_client)
        result = asyncio.run(run_level(url, c, n, args.durations, seed=c))
        levels.append(result)
        print(json.dumps(result), flush=True)
    print(table(levels))
    if args.out:
        args.out.write_text(json.dumps({"meta": meta, "levels": levels}, indent=2))
    if args.plot:
        plot(levels, args.plot)
    if args.metrics_out:
        import requests

        args.metrics_out.write_text(requests.get(f"{url}/metrics", timeout=60).text)
        print(f"wrote the server's /metrics after the run to {args.metrics_out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
