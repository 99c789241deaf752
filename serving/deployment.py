"""The Ray Serve application: one ``MusicGenServer`` replica per model copy, each with its own batching engine.

``build_app`` is the import path for YAML deploys (``serve build musicgen_onnx.serving.deployment:build_app``)
and what ``musicgen-onnx serve`` runs locally. Ray places replicas by the CPUs (``threads``) and GPUs they ask
for, restarts a replica whose process dies or whose ``check_health`` fails three times in a row (the
decoder-loop watchdog), and on shutdown drains a replica (requests in flight finish) before ``__del__``.
"""

# No `from __future__ import annotations`: FastAPI reads the routes' annotations (Request) at runtime.
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from ray import serve
from ray.serve import Application

from .config import ServeConfig
from .http import generations, guarded
from .playground import page
from .service import MusicGenService, ServiceError

logger = logging.getLogger("musicgen_onnx")

__all__ = ["APP_NAME", "MusicGenServer", "build_app", "deployment_options"]

APP_NAME = "musicgen"
api = FastAPI(title="musicgen-onnx", version="0.1", docs_url=None, redoc_url=None, openapi_url="/openapi.json")

#: Deployment settings ``build_app`` accepts besides the ``ServeConfig`` fields.
DEPLOYMENT_KEYS = {
    "replicas": 1,  # an integer, or "auto" (autoscaling between 1 and max_replicas)
    "max_replicas": 4,
    "health_check_period_s": 5.0,
    "health_check_timeout_s": 30.0,
    "graceful_shutdown_timeout_s": None,  # None: request_timeout_s + 30, so a drain lets every request finish
}


@serve.deployment(name="MusicGenServer")
@serve.ingress(api)
class MusicGenServer:
    """A replica: loads the export and warms it up once, then serves the HTTP API from its engine."""

    def __init__(self, config: dict[str, Any]) -> None:
        logging.getLogger("musicgen_onnx").setLevel(logging.INFO)
        self.service = MusicGenService(ServeConfig.from_dict(config))

    @api.post("/v1/audio/generations")
    async def create_generation(self, request: Request) -> Response:
        return await guarded(lambda: generations(request, self.service))

    @api.get("/")
    async def playground(self) -> Response:
        """The playground page: prompt, controls, live playback, timings, download (docs/design.md §21)."""
        return HTMLResponse(page(), headers={"Cache-Control": "no-cache"})

    @api.get("/v1/models")
    async def models(self) -> Response:
        return JSONResponse(self.service.describe())

    @api.get("/healthz")
    async def healthz(self) -> Response:
        async def report() -> Response:
            return JSONResponse(self.service.health())

        return await guarded(report)

    @api.post("/debug/stall")
    async def stall(self, seconds: float = 60.0) -> Response:
        """Fault drill (``fault_injection`` only): hold the decoder loop so the watchdog must replace us."""

        async def drill() -> Response:
            self.service.stall(seconds)
            return JSONResponse({"stalled_for_s": seconds})

        return await guarded(drill)

    def check_health(self) -> None:
        """Ray calls this every ``health_check_period_s``; raising marks the replica unhealthy."""
        try:
            self.service.health()
        except ServiceError as exc:
            raise RuntimeError(exc.message) from None

    def __del__(self) -> None:
        # Ray calls this after its drain: requests in flight have finished (the drain waits up to
        # graceful_shutdown_timeout_s, longer than any request may run); anything left is cancelled.
        service = getattr(self, "service", None)
        if service is not None:
            service.close(grace_s=5.0)


def deployment_options(config: ServeConfig, **settings: Any) -> dict[str, Any]:
    """Ray deployment options for ``config``: resources from threads / provider, back-pressure from the engine."""
    values = {**DEPLOYMENT_KEYS, **settings}
    replicas = values["replicas"]
    options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": config.threads, "num_gpus": config.num_gpus},
        "max_ongoing_requests": config.max_ongoing_requests,
        "health_check_period_s": float(values["health_check_period_s"]),
        "health_check_timeout_s": float(values["health_check_timeout_s"]),
        "graceful_shutdown_timeout_s": float(
            config.request_timeout_s + 30
            if values["graceful_shutdown_timeout_s"] is None
            else values["graceful_shutdown_timeout_s"]
        ),
    }
    if replicas == "auto":
        top = values["max_replicas"]
        if isinstance(top, bool) or not isinstance(top, int) or top < 1:
            raise ValueError(f"max_replicas must be an integer >= 1, got {top!r}")
        options["autoscaling_config"] = {
            "min_replicas": 1,
            "max_replicas": top,
            "target_ongoing_requests": config.max_batch,
        }
    elif isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
        raise ValueError(f"replicas must be an integer >= 1 or 'auto', got {replicas!r}")
    else:
        options["num_replicas"] = replicas
    return options


def build_app(args: dict[str, Any]) -> Application:
    """The application for ``serve run`` / ``serve build`` / ``serve deploy`` and ``musicgen-onnx serve``.

    ``args``: the ``ServeConfig`` fields (``model_dir`` required) plus ``replicas``, ``max_replicas`` and the
    health-check / shutdown timings of ``DEPLOYMENT_KEYS``. Unknown keys are an error naming the known ones.
    """
    values = dict(args)
    settings = {key: values.pop(key) for key in list(values) if key in DEPLOYMENT_KEYS}
    if isinstance(settings.get("replicas"), str) and settings["replicas"] != "auto":
        settings["replicas"] = _number("replicas", settings["replicas"], int)
    for key in ("max_replicas", *[k for k in DEPLOYMENT_KEYS if k.endswith("_s")]):
        if isinstance(settings.get(key), str):
            settings[key] = _number(key, settings[key], int if key == "max_replicas" else float)
    config = ServeConfig.from_dict(ServeConfig.coerce(values))
    options = deployment_options(config, **settings)
    return MusicGenServer.options(**options).bind(config.to_dict())


def _number(name: str, text: str, kind: type) -> Any:
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"{name} must be {'an integer' if kind is int else 'a number'}, got {text!r}") from None
