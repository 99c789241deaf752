"""Helpers for the tests of the served app (tests/test_serving.py, tests/test_playground.py).

The session-scoped fixtures that use them (``cluster``, ``stereo_app``) live in conftest.py, so that both test
modules share one local Ray cluster and one served tiny export per test session.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

import requests
from musicgen_onnx.serving.deployment import build_app
from ray import serve

__all__ = ["free_port", "poll", "run_app"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_app(app_args: dict, name: str, route: str, url: str) -> str:
    """Deploy ``build_app(app_args)`` as application ``name`` at ``route``; its base URL once healthy."""
    serve.run(build_app(app_args), name=name, route_prefix=route)
    base = url + (route if route != "/" else "")
    poll(lambda: requests.get(f"{base}/healthz", timeout=10).status_code == 200, 120, f"{name} to come up")
    return base


def poll(check: Callable[[], Any], limit_s: float, what: str, every: float = 0.5) -> Any:
    """Call ``check`` until it returns something truthy, at most ``limit_s`` seconds."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            value = check()
        except requests.RequestException:
            value = None
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"waited {limit_s} s for {what}")
