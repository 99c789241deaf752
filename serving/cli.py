"""``musicgen-onnx serve MODEL_DIR``: the Ray Serve app on this machine (or on a running cluster with --address)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

import ray
import yaml
from ray import serve
from ray.serve.schema import ServeDeploySchema

from .deployment import APP_NAME, build_app

logger = logging.getLogger("musicgen_onnx")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="musicgen-onnx serve",
        description="Serve an exported MusicGen model over HTTP (POST /v1/audio/generations) with Ray Serve.",
    )
    p.add_argument("model_dir", type=Path, help="export directory (made by `musicgen-onnx export`)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    p.add_argument("--replicas", default="1", help="model copies: a number, or 'auto' to scale with load (default 1)")
    p.add_argument("--max-replicas", type=int, default=4, help="with --replicas auto: the most copies (default 4)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads per replica, reserved from Ray (default 2)")
    p.add_argument("--provider", choices=("auto", "cuda", "cpu"), default="auto", help="execution provider")
    p.add_argument("--max-batch", type=int, default=4, help="prompts decoded together per replica (default 4)")
    p.add_argument("--max-queued", type=int, default=8, help="requests waiting per replica before 429 (default 8)")
    p.add_argument("--max-duration", type=float, default=120.0, help="longest clip a request may ask for (s)")
    p.add_argument("--request-timeout", type=float, default=600.0, help="cancel requests running longer (s)")
    p.add_argument("--address", help="join a running Ray cluster (e.g. 'auto' after `ray start`); default: local")
    p.add_argument("--no-verify", action="store_true", help="skip hashing the export's files at replica start")
    p.add_argument(
        "--write-config",
        type=Path,
        metavar="YAML",
        help="write the `serve deploy` config for these settings to YAML and exit (nothing is started)",
    )
    return p


def deploy_config(app_args: dict, host: str, port: int) -> dict:
    """The ``serve deploy`` document (Ray's ServeDeploySchema) that runs ``build_app(app_args)``."""
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": host, "port": port},
        "applications": [
            {
                "name": "musicgen",
                "route_prefix": "/",
                "import_path": "musicgen_onnx.serving.deployment:build_app",
                "args": app_args,
            }
        ],
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if not (args.model_dir / "manifest.json").is_file():
        print(f"musicgen-onnx serve: {args.model_dir} is not an export directory (no manifest.json)", file=sys.stderr)
        return 2
    replicas = args.replicas if args.replicas == "auto" else _int_or_exit("--replicas", args.replicas)
    app_args = {
        "model_dir": str(args.model_dir.resolve()),
        "provider": args.provider,
        "threads": args.threads,
        "max_batch": args.max_batch,
        "max_queued": args.max_queued,
        "max_duration": args.max_duration,
        "request_timeout_s": args.request_timeout,
        "verify": not args.no_verify,
        "replicas": replicas,
        "max_replicas": args.max_replicas,
    }
    try:
        app = build_app(app_args)
    except ValueError as exc:
        print(f"musicgen-onnx serve: {exc}", file=sys.stderr)
        return 2
    if args.write_config is not None:
        document = deploy_config(app_args, args.host, args.port)
        ServeDeploySchema.model_validate(document)
        args.write_config.write_text(yaml.safe_dump(document, sort_keys=False))
        print(f"wrote {args.write_config}: `serve deploy {args.write_config}` runs it on a cluster")
        return 0
    ray.init(address=args.address)
    serve.start(http_options={"host": args.host, "port": args.port})
    serve.run(app, name=APP_NAME, route_prefix="/")
    logger.info("serving %s at http://%s:%d/ (Ctrl-C to stop)", args.model_dir, args.host, args.port)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    logger.info("shutting down: draining requests in flight")
    serve.delete(APP_NAME)
    if args.address is None:
        serve.shutdown()
        ray.shutdown()
    return 0


def _int_or_exit(flag: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise SystemExit(f"musicgen-onnx serve: {flag} must be a number or 'auto', got {text!r}") from None
