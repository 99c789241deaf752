"""``musicgen-onnx serve MODEL_DIR``: the Ray Serve app on this machine (or on a running cluster with --address)."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import signal
import sys
import threading
from pathlib import Path

import ray
import yaml
from ray import serve
from ray.serve.schema import ServeDeploySchema

from .auth import KEYS_FILE_ENV, KeyFileError, load_keys
from .deployment import APP_NAME, DEPLOYMENT_KEYS, MusicGenServer, app_options, build_app

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
    auto = p.add_argument_group("autoscaling (with --replicas auto; docs/design.md §22)")
    auto.add_argument("--min-replicas", type=int, help=f"the fewest copies (default {DEPLOYMENT_KEYS['min_replicas']})")
    auto.add_argument("--max-replicas", type=int, help=f"the most copies (default {DEPLOYMENT_KEYS['max_replicas']})")
    auto.add_argument(
        "--target-ongoing-requests",
        type=float,
        help="requests in flight per replica that autoscaling aims at (default: --max-batch)",
    )
    auto.add_argument(
        "--upscale-delay",
        type=float,
        help=f"seconds above target before a copy is added (default {DEPLOYMENT_KEYS['upscale_delay_s']:g})",
    )
    auto.add_argument(
        "--downscale-delay",
        type=float,
        help=f"seconds below target before a copy is removed (default {DEPLOYMENT_KEYS['downscale_delay_s']:g})",
    )
    p.add_argument(
        "--replica-cpus",
        type=float,
        help="CPUs Ray reserves per replica (default: --threads; a fraction lets replicas share cores)",
    )
    p.add_argument("--threads", type=int, default=2, help="CPU threads per replica, reserved from Ray (default 2)")
    p.add_argument("--provider", choices=("auto", "cuda", "cpu"), default="auto", help="execution provider")
    p.add_argument("--max-batch", type=int, default=4, help="prompts decoded together per replica (default 4)")
    p.add_argument("--max-queued", type=int, default=8, help="requests waiting per replica before 429 (default 8)")
    p.add_argument("--max-duration", type=float, default=120.0, help="longest clip a request may ask for (s)")
    p.add_argument("--request-timeout", type=float, default=600.0, help="cancel requests running longer (s)")
    p.add_argument("--address", help="join a running Ray cluster (e.g. 'auto' after `ray start`); default: local")
    p.add_argument("--no-verify", action="store_true", help="skip hashing the export's files at replica start")
    p.add_argument(
        "--api-keys",
        type=Path,
        metavar="FILE",
        default=os.environ.get(KEYS_FILE_ENV) or None,
        help=f"require API keys from this file (default: ${KEYS_FILE_ENV}; made by `musicgen-onnx serve-keys add`)",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="allow a --host other than loopback without API keys (anyone who reaches the port may use it)",
    )
    p.add_argument(
        "--write-config",
        type=Path,
        metavar="YAML",
        help="write the `serve deploy` config for these settings to YAML and exit (nothing is started)",
    )
    return p


def deploy_config(app_args: dict, host: str, port: int) -> dict:
    """The ``serve deploy`` document (Ray's ServeDeploySchema) that runs ``build_app(app_args)``. The replica
    count or ``autoscaling_config`` is also written as the deployment's override, where operators look for it
    (Ray applies a ``deployments`` entry over what ``build_app`` sets, so editing it there takes effect)."""
    _, options = app_options(app_args)
    scaling = {key: options[key] for key in ("num_replicas", "autoscaling_config") if key in options}
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": host, "port": port},
        "applications": [
            {
                "name": "musicgen",
                "route_prefix": "/",
                "import_path": "musicgen_onnx.serving.deployment:build_app",
                "args": app_args,
                "deployments": [{"name": MusicGenServer.name, **scaling}],
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
    problem = _access_problem(args) or _autoscaling_problem(args, replicas)
    if problem:
        print(f"musicgen-onnx serve: {problem}", file=sys.stderr)
        return 2
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
        **{key: value for key, value in _deployment_flags(args).items() if value is not None},
    }
    if args.api_keys is not None:
        app_args["api_keys_file"] = str(args.api_keys.resolve())
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


#: build_app settings -> the flags that set them
_FLAGS = {
    "min_replicas": "min_replicas",
    "max_replicas": "max_replicas",
    "target_ongoing_requests": "target_ongoing_requests",
    "upscale_delay_s": "upscale_delay",
    "downscale_delay_s": "downscale_delay",
}


def _deployment_flags(args: argparse.Namespace) -> dict:
    return {"num_cpus": args.replica_cpus, **{key: getattr(args, flag) for key, flag in _FLAGS.items()}}


def _autoscaling_problem(args: argparse.Namespace, replicas: int | str) -> str | None:
    given = [f"--{flag.replace('_', '-')}" for flag in _FLAGS.values() if getattr(args, flag) is not None]
    if given and replicas != "auto":
        return f"{', '.join(given)} only apply with --replicas auto"
    return None


def is_loopback(host: str) -> bool:
    """Whether ``host`` only listens on this machine (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to any interface


def _access_problem(args: argparse.Namespace) -> str | None:
    """API keys are off by default; beyond loopback they are required unless --insecure says otherwise. A keys
    file is checked here, so a typo is one clear error rather than replicas failing to start."""
    if args.api_keys is not None:
        try:
            keys = load_keys(args.api_keys)
        except KeyFileError as exc:
            return str(exc)
        if not keys:
            logger.warning("API keys file %s has no keys yet: every generation will be answered 401", args.api_keys)
        return None
    if is_loopback(args.host) or args.insecure:
        return None
    return (
        f"--host {args.host} accepts connections from other machines, and no API keys are set: anyone who can "
        f"reach port {args.port} could generate. Give --api-keys FILE (or set {KEYS_FILE_ENV}; "
        "`musicgen-onnx serve-keys --file FILE add NAME` makes a key), or --insecure to serve without keys"
    )


def _int_or_exit(flag: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise SystemExit(f"musicgen-onnx serve: {flag} must be a number or 'auto', got {text!r}") from None
