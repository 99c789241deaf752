"""The body of ``POST /v1/audio/generations``, checked field by field with messages that name the valid values.

Types and unknown fields are checked here; ranges that depend on the checkpoint (guidance, top_k against the
vocabulary, seeds) are checked by the runtime itself when the request is built, and its message is returned.
JSON bodies and multipart forms (which carry an audio prompt and send every field as a string) parse to the
same ``GenerationBody``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from .formats import FORMATS, STREAMABLE

__all__ = ["MAX_INPUT_CHARS", "UPLOADS", "GenerationBody", "InvalidRequestError", "Uploads", "parse_body"]

MAX_INPUT_CHARS = 4000


class InvalidRequestError(ValueError):
    """A request the API refuses before any work (HTTP 422); the message is shown to the client as is."""


@dataclass(frozen=True)
class GenerationBody:
    input: str | None = None  # text prompt; None (JSON null) for unconditional generation
    duration: float | None = None  # seconds; None: the server's default_duration
    seed: int | None = None  # None: the server draws one and returns it in X-Seed
    guidance_scale: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    temperature: float | None = None
    response_format: str = "wav"
    stream: bool = False


@dataclass(frozen=True)
class Uploads:
    """The audio files of a multipart body, as uploaded (any format libsndfile reads, any sample rate); the
    service decodes them. ``melody``: melody checkpoints only (docs/design.md §18)."""

    audio_prompt: bytes | None = None
    melody: bytes | None = None


UPLOADS = tuple(f.name for f in fields(Uploads))
_NUMBERS = ("duration", "guidance_scale", "top_p", "temperature")
_INTEGERS = ("seed", "top_k")
KNOWN = tuple(f.name for f in fields(GenerationBody))


def parse_body(values: Any, *, from_form: bool = False) -> GenerationBody:
    """``values``: the decoded JSON object, or the form's fields (strings) when ``from_form``."""
    if not isinstance(values, dict):
        raise InvalidRequestError(f"the body must be a JSON object with the fields {', '.join(KNOWN)}")
    unknown = sorted(set(values) - set(KNOWN))
    files = [name for name in unknown if name in UPLOADS]
    if files and not from_form:
        raise InvalidRequestError(f"{', '.join(files)} must be uploaded as a file in a multipart/form-data body")
    if unknown:
        raise InvalidRequestError(f"unknown fields {unknown}; accepted: {', '.join(KNOWN)}")
    out: dict[str, Any] = {}
    for name, raw in values.items():
        value = _from_form(name, raw) if from_form else raw
        out[name] = _check(name, value)
    body = GenerationBody(**out)
    if body.stream and body.response_format not in STREAMABLE:
        raise InvalidRequestError(
            f"response_format {body.response_format!r} cannot be streamed; with stream=true use one of "
            f"{', '.join(STREAMABLE)}"
        )
    return body


def _from_form(name: str, raw: Any) -> Any:
    """Form fields are strings: "" and "null" mean unset; numbers and booleans are parsed."""
    if not isinstance(raw, str):
        raise InvalidRequestError(f"{name} must be a form field, not a file")
    text = raw.strip()
    if name == "input":
        return None if text in ("", "null") else raw
    if text in ("", "null"):
        return None
    if name == "stream":
        if text.lower() not in ("true", "false", "1", "0"):
            raise InvalidRequestError(f"stream must be true or false, got {raw!r}")
        return text.lower() in ("true", "1")
    if name in _INTEGERS:
        try:
            return int(text)
        except ValueError:
            raise InvalidRequestError(f"{name} must be an integer, got {raw!r}") from None
    if name in _NUMBERS:
        try:
            return float(text)
        except ValueError:
            raise InvalidRequestError(f"{name} must be a number, got {raw!r}") from None
    return text


def _check(name: str, value: Any) -> Any:
    if value is None:
        if name in ("response_format", "stream"):
            raise InvalidRequestError(f"{name} must not be null")
        return None
    if name == "input":
        if not isinstance(value, str):
            raise InvalidRequestError("input must be a text prompt (a string), or null for unconditional generation")
        if len(value) > MAX_INPUT_CHARS:
            raise InvalidRequestError(f"input is {len(value)} characters; at most {MAX_INPUT_CHARS} are accepted")
        return value
    if name in _NUMBERS:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InvalidRequestError(f"{name} must be a finite number, got {value!r}")
        return float(value)
    if name in _INTEGERS:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidRequestError(f"{name} must be an integer, got {value!r}")
        return value
    if name == "response_format":
        if value not in FORMATS:
            raise InvalidRequestError(f"response_format must be one of {', '.join(FORMATS)}, got {value!r}")
        return value
    if name == "stream":
        if not isinstance(value, bool):
            raise InvalidRequestError(f"stream must be true or false, got {value!r}")
        return value
    raise InvalidRequestError(f"unknown field {name!r}")
