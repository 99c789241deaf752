"""The Ray Serve application: one ``MusicGenServer`` replica per model copy, each with its own batching engine.

``build_app`` is the import path for YAML deploys (``serve build musicgen_onnx.serving.deployment:build_app``)
and what ``musicgen-onnx serve`` runs locally. Ray places replicas by the CPUs (``threads``) and GPUs they ask
for, restarts a replica whose process dies or whose ``check_health`` fails three times in a row (the
decoder-loop watchdog), and on shutdown drains a replica (requests in flight finish) before ``__del__``.
"""

# No `from __future__ import annotations`: FastAPI reads the routes' annotations (Request) at runtime.
import logging
import weakref
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from ray import serve
from ray.serve import Application

from . import observability
from .auth import AccessControl, AccessDeniedError, Lease
from .config import ServeConfig
from .http import generations, guarded
from .playground import page
from .service import MusicGenService, ServiceError

logger = logging.getLogger("musicgen_onnx")

__all__ = [
    "APP_NAME",
    "DEPLOYMENT_KEYS",
    "MusicGenServer",
    "app_options",
    "autoscaling_config",
    "build_app",
    "deployment_options",
]

APP_NAME = "musicgen"
api = FastAPI(title="musicgen-onnx", version="0.1", docs_url=None, redoc_url=None, openapi_url="/openapi.json")
observability.install(api)  # request ids, JSON access log, GET /metrics (docs/design.md §20)

#: Deployment settings ``build_app`` accepts besides the ``ServeConfig`` fields.
DEPLOYMENT_KEYS = {
    "replicas": 1,  # an integer, or "auto" (autoscaling between min_replicas and max_replicas)
    # with replicas "auto" (Ray Serve's autoscaling on ongoing requests, docs/design.md §22):
    "min_replicas": 1,
    "max_replicas": 4,
    "target_ongoing_requests": None,  # per replica; None: max_batch (a replica's slots all busy, none queued)
    "upscale_delay_s": 10.0,  # load above target this long before a replica is added (Ray's default: 30)
    "downscale_delay_s": 120.0,  # below target this long before one is removed (Ray's: 600)
    "look_back_period_s": 30.0,  # the window the ongoing requests are averaged over (Ray's default)
    "num_cpus": None,  # CPUs Ray reserves per replica; None: threads (fractions let replicas share cores)
    "health_check_period_s": 5.0,
    "health_check_timeout_s": 30.0,
    "graceful_shutdown_timeout_s": None,  # None: request_timeout_s + 30, so a drain lets every request finish
}


# Above the class: @serve.ingress serializes the routes when the class is defined, with the module globals
# that exist by then (a function defined below it would be a NameError in the replica).
def _release_when_sent(response: Response, lease: Lease) -> Response:
    """A stream counts against its key until its last byte is sent or the client is gone (the body iterator
    ends or is cancelled); a whole clip is already made. The finalizer covers a body that never starts."""
    if not isinstance(response, StreamingResponse):
        lease.release()
        return response
    body = response.body_iterator

    async def counted():
        try:
            async for piece in body:
                yield piece
        finally:
            lease.release()

    response.body_iterator = counted()
    weakref.finalize(response, lease.release)
    return response


@serve.deployment(name="MusicGenServer")
@serve.ingress(api)
class MusicGenServer:
    """A replica: loads the export and warms it up once, then serves the HTTP API from its engine."""

    def __init__(self, config: dict[str, Any]) -> None:
        logging.getLogger("musicgen_onnx").setLevel(logging.INFO)
        settings = ServeConfig.from_dict(config)
        self.access = AccessControl(settings.api_keys_file, retry_after_s=settings.retry_after_s)
        self.service = MusicGenService(settings)
        self.sampler = observability.start(self.service)

    def _key(self, request: Request, admit: bool = False) -> Lease | None:
        """API keys (when on): 401 / 403, and with ``admit`` the key's rate and concurrency (429). The key's id
        (never the key) is left in ``request.state.key_id`` for the access log (None: keys off or unknown)."""
        request.state.key_id = None
        try:
            if admit:
                lease = self.access.admit(request.headers.get("authorization"))
                request.state.key_id = lease.key_id
                return lease
            entry = self.access.identify(request.headers.get("authorization"))
        except AccessDeniedError as exc:
            request.state.key_id = exc.key_id
            raise
        request.state.key_id = None if entry is None else entry.key_id
        return None

    @api.post("/v1/audio/generations")
    async def create_generation(self, request: Request) -> Response:
        async def run() -> Response:
            lease = self._key(request, admit=True)
            try:
                response = await generations(request, self.service)
            except BaseException:
                lease.release()
                raise
            return _release_when_sent(response, lease)

        return await guarded(run)

    @api.get("/")
    async def playground(self) -> Response:
        """The playground page: prompt, controls, live playback, timings, download (docs/design.md §21)."""
        return HTMLResponse(page(), headers={"Cache-Control": "no-cache"})

    @api.get("/v1/models")
    async def models(self, request: Request) -> Response:
        async def describe() -> Response:
            self._key(request)
            return JSONResponse(self.service.describe())

        return await guarded(describe)

    @api.get("/healthz")
    async def healthz(self) -> Response:
        async def report() -> Response:
            return JSONResponse(self.service.health())

        return await guarded(report)

    @api.post("/debug/stall")
    async def stall(self, request: Request, seconds: float = 60.0) -> Response:
        """Fault drill (``fault_injection`` only): hold the decoder loop so the watchdog must replace us."""

        async def drill() -> Response:
            self._key(request)
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
        sampler = getattr(self, "sampler", None)
        if sampler is not None:
            sampler.stop()
        service = getattr(self, "service", None)
        if service is not None:
            service.close(grace_s=5.0)


def deployment_options(config: ServeConfig, **settings: Any) -> dict[str, Any]:
    """Ray deployment options for ``config``: resources from threads / provider, back-pressure from the engine,
    and with ``replicas="auto"`` Ray Serve's autoscaling on ongoing requests."""
    values = {**DEPLOYMENT_KEYS, **settings}
    replicas = values["replicas"]
    cpus = config.threads if values["num_cpus"] is None else values["num_cpus"]
    if isinstance(cpus, bool) or not isinstance(cpus, (int, float)) or not cpus > 0:
        raise ValueError(f"num_cpus must be a number > 0, got {cpus!r}")
    options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": cpus, "num_gpus": config.num_gpus},
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
        options["autoscaling_config"] = autoscaling_config(config, values)
    elif isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
        raise ValueError(f"replicas must be an integer >= 1 or 'auto', got {replicas!r}")
    else:
        options["num_replicas"] = replicas
    return options


def autoscaling_config(config: ServeConfig, values: dict[str, Any]) -> dict[str, Any]:
    """Ray Serve's ``autoscaling_config``: replicas follow the requests in flight per replica (ongoing requests:
    those in the engine plus those queued), between ``min_replicas`` and ``max_replicas``."""
    low, top = values["min_replicas"], values["max_replicas"]
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise ValueError(f"max_replicas must be an integer >= 1, got {top!r}")
    if isinstance(low, bool) or not isinstance(low, int) or not 0 <= low <= top:
        raise ValueError(f"min_replicas must be an integer in [0, max_replicas={top}], got {low!r}")
    target = config.max_batch if values["target_ongoing_requests"] is None else values["target_ongoing_requests"]
    delays = {name: values[name] for name in ("upscale_delay_s", "downscale_delay_s", "look_back_period_s")}
    for name, value in (("target_ongoing_requests", target), *delays.items()):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"{name} must be a number > 0, got {value!r}")
    return {
        "min_replicas": low,
        "max_replicas": top,
        "target_ongoing_requests": target,
        **{name: float(value) for name, value in delays.items()},
    }


def build_app(args: dict[str, Any]) -> Application:
    """The application for ``serve run`` / ``serve build`` / ``serve deploy`` and ``musicgen-onnx serve``.

    ``args``: the ``ServeConfig`` fields (``model_dir`` required) plus the replica count, autoscaling,
    resources and health-check / shutdown timings of ``DEPLOYMENT_KEYS``. Unknown keys are an error naming the
    known ones. Strings (``serve run key=value``) are converted to the setting's type.
    """
    config, options = app_options(args)
    return MusicGenServer.options(**options).bind(config.to_dict())


def app_options(args: dict[str, Any]) -> tuple[ServeConfig, dict[str, Any]]:
    """``build_app``'s arguments -> the replica's ``ServeConfig`` and the deployment's Ray options."""
    values = dict(args)
    settings = {key: values.pop(key) for key in list(values) if key in DEPLOYMENT_KEYS}
    if isinstance(settings.get("replicas"), str) and settings["replicas"] != "auto":
        settings["replicas"] = _number("replicas", settings["replicas"], int)
    for key in DEPLOYMENT_KEYS:
        if key != "replicas" and isinstance(settings.get(key), str):
            settings[key] = _number(key, settings[key], int if key.endswith("_replicas") else float)
    config = ServeConfig.from_dict(ServeConfig.coerce(values))
    return config, deployment_options(config, **settings)


def _number(name: str, text: str, kind: type) -> Any:
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"{name} must be {'an integer' if kind is int else 'a number'}, got {text!r}") from None
