"""What one served model is: the export, its engine's capacity, and the limits the HTTP API enforces.

One frozen object, built once (CLI flags, YAML args or Python) and handed to every replica, so that a
replica started by Ray on another machine runs with exactly the settings the operator gave.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

__all__ = ["ServeConfig"]

PROVIDERS = ("auto", "cuda", "cpu")
_TEXT_FIELDS = ("model_dir", "provider", "api_keys_file")  # taken as given by ``coerce``


@dataclass(frozen=True)
class ServeConfig:
    """Settings of one served model (see docs/design.md §20).

    ``threads`` is the onnxruntime thread count of a replica and also the CPUs Ray reserves for it
    (onnxruntime ignores the OMP_NUM_THREADS Ray sets). ``max_batch`` prompts decode at once per replica and
    ``max_queued`` more wait; beyond that a request is answered 429 with ``Retry-After: retry_after_s``.
    """

    model_dir: str
    provider: str = "auto"
    threads: int = 2
    max_batch: int = 4
    max_queued: int = 8
    max_seconds: float | None = None  # longest window (cache length); None: the checkpoint's window
    max_duration: float = 120.0  # longest clip one request may ask for (long-form beyond the window)
    chunk_seconds: float = 1.0  # streamed pieces; every clip is decoded this way (streamed or not)
    default_duration: float = 10.0
    request_timeout_s: float = 600.0  # a request still running after this is cancelled (408)
    max_body_bytes: int = 64 * 1024  # JSON bodies
    max_upload_bytes: int = 16 * 1024 * 1024  # multipart bodies with an audio prompt
    retry_after_s: int = 2
    stall_after_s: float = 60.0  # watchdog: work waiting and no decoder step for this long -> unhealthy
    warmup_seconds: float = 0.5  # generated once at replica start, then EnCodec over max_seconds (0: no warm-up)
    verify: bool = True  # hash every file against the manifest at replica start
    allow_spinning: bool = False  # replicas share nodes: idle onnxruntime workers sleep
    fault_injection: bool = False  # enables POST /debug/stall (fault drills and tests only)
    api_keys_file: str | None = None  # API keys (serving/auth.py, docs/design.md §22); None: no keys asked for

    def __post_init__(self) -> None:
        if not isinstance(self.model_dir, str) or not self.model_dir:
            raise ValueError(f"model_dir must be a path, got {self.model_dir!r}")
        if self.provider not in PROVIDERS:
            raise ValueError(f"provider must be one of {', '.join(PROVIDERS)}, got {self.provider!r}")
        for name, low in (("threads", 1), ("max_batch", 1), ("max_queued", 0), ("retry_after_s", 1)):
            _check_int(name, getattr(self, name), low)
        _check_int("max_body_bytes", self.max_body_bytes, 1024)
        _check_int("max_upload_bytes", self.max_upload_bytes, 1024)
        for name in ("max_duration", "chunk_seconds", "default_duration", "request_timeout_s", "stall_after_s"):
            _check_positive(name, getattr(self, name))
        if self.max_seconds is not None:
            _check_positive("max_seconds", self.max_seconds)
        if self.api_keys_file is not None and (not isinstance(self.api_keys_file, str) or not self.api_keys_file):
            raise ValueError(f"api_keys_file must be a path or None, got {self.api_keys_file!r}")
        if self.default_duration > self.max_duration:
            raise ValueError(
                f"default_duration ({self.default_duration:g} s) must not exceed max_duration ({self.max_duration:g} s)"
            )
        if not (isinstance(self.warmup_seconds, (int, float)) and 0 <= self.warmup_seconds <= 30):
            raise ValueError(f"warmup_seconds must be in [0, 30], got {self.warmup_seconds!r}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ServeConfig:
        """From YAML / CLI arguments: unknown keys are an error naming the known ones."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown serve settings {unknown}; known: {', '.join(sorted(known))}")
        return cls(**values)

    @classmethod
    def coerce(cls, values: dict[str, Any]) -> dict[str, Any]:
        """``key=value`` strings (``serve run`` / ``serve build`` arguments) to the types of the fields."""
        out = dict(values)
        for f in fields(cls):
            text = out.get(f.name)
            if not isinstance(text, str) or f.name in _TEXT_FIELDS:
                continue
            default = f.default
            try:
                if isinstance(default, bool):
                    if text.lower() not in ("true", "false", "1", "0"):
                        raise ValueError
                    out[f.name] = text.lower() in ("true", "1")
                elif isinstance(default, int):
                    out[f.name] = int(text)
                elif text.lower() in ("none", "null") and default is None:
                    out[f.name] = None
                else:
                    out[f.name] = float(text)
            except ValueError:
                raise ValueError(f"{f.name} must be a {type(default).__name__}, got {text!r}") from None
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def num_gpus(self) -> float:
        """GPUs a replica asks Ray for: one when the model must run on CUDA."""
        return 1.0 if self.provider == "cuda" else 0.0

    @property
    def max_ongoing_requests(self) -> int:
        """What Ray may hand one replica at once: its engine's capacity plus room for health and model queries,
        so that back-pressure is the engine's own 429 rather than Ray's 503."""
        return self.max_batch + self.max_queued + 8


def _check_int(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def _check_positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a number > 0, got {value!r}")
