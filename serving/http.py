"""HTTP around ``MusicGenService``: bodies in, audio out, every failure as a JSON error without a stack trace.

Generation runs in a worker thread that feeds an asyncio queue, so the event loop never blocks on the model.
When the client goes away Ray Serve cancels the handler task; the ``finally`` below cancels the request's
decoder rows, which the engine frees at its next step.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from .access_log import record_of
from .formats import content_type, encode, file_rate, wav_stream_header
from .schema import UPLOADS, InvalidRequestError, Uploads, parse_body
from .service import Generation, MusicGenService, ServiceError

logger = logging.getLogger("musicgen_onnx")

__all__ = ["error_response", "generations", "guarded"]

_DONE = object()


def error_response(status: int, message: str, kind: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """OpenAI-style error body: ``{"error": {"message", "type", "code"}}``."""
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status, headers=headers)


async def guarded(handler: Callable[[], Awaitable[Response]]) -> Response:
    """Run a route; known failures become their status, anything else a 500 that names no internals."""
    try:
        return await handler()
    except ServiceError as exc:
        return error_response(exc.status, exc.message, exc.kind, exc.headers)
    except InvalidRequestError as exc:
        return error_response(422, str(exc), "invalid_request_error")
    except Exception:
        logger.exception("request failed")
        return error_response(500, "internal error while generating; the server log has the details", "server_error")


async def read_request(request: Request, service: MusicGenService):
    """The body (JSON, or a multipart form with ``audio_prompt`` and / or ``melody`` files) within the size
    limits, and the uploaded files."""
    cfg = service.config
    multipart = request.headers.get("content-type", "").startswith("multipart/form-data")
    limit = cfg.max_upload_bytes if multipart else cfg.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ServiceError(413, f"the body is {declared} bytes; at most {limit} are accepted", "invalid_request_error")
    raw = bytearray()
    async for part in request.stream():
        raw += part
        if len(raw) > limit:
            raise ServiceError(413, f"the body exceeds {limit} bytes", "invalid_request_error")
    if not multipart:
        try:
            values = json.loads(bytes(raw) or b"{}")
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidRequestError(f"the body is not valid JSON: {exc}") from None
        return parse_body(values), Uploads()
    form_request = Request(request.scope, _replay(bytes(raw)))
    form = await form_request.form(max_part_size=limit)
    fields, files = {}, {}
    for name, value in form.multi_items():
        if name in UPLOADS:
            if isinstance(value, str):
                raise InvalidRequestError(f"{name} must be an uploaded audio file")
            files[name] = await value.read()
        else:
            fields[name] = value
    return parse_body(fields, from_form=True), Uploads(**files)


def _replay(body: bytes):
    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


async def generations(request: Request, service: MusicGenService) -> Response:
    """``POST /v1/audio/generations``."""
    body, uploads = await read_request(request, service)
    record = record_of(request)  # the access-log line of this request (docs/design.md §20)
    if record is not None:
        record.note_body(body, service.config.default_duration)
    # text encoder, melody chroma, admission (422 / 429)
    generation = await asyncio.to_thread(service.start, body, uploads.audio_prompt, uploads.melody)
    if record is not None:
        record.generation = generation
    m = service.model
    headers = {
        "X-Seed": str(generation.seed),
        "X-Audio-Sample-Rate": str(m.sampling_rate),
        "X-Audio-Channels": str(m.channels),
    }
    media = content_type(body.response_format, m.sampling_rate, m.channels)
    if body.stream:
        headers["X-Audio-Samples"] = str(generation.total_samples)  # unless the stream ends early
        pieces = _pcm_pieces(generation, service.config.request_timeout_s)
        prefix = wav_stream_header(m.sampling_rate, m.channels) if body.response_format == "wav" else b""
        return StreamingResponse(_with_prefix(prefix, pieces), media_type=media, headers=headers)
    try:
        pcm = await asyncio.wait_for(_collect(generation), service.config.request_timeout_s)
    except TimeoutError:
        generation.cancel("timeout")
        raise ServiceError(
            408,
            f"the request did not finish within request_timeout_s={service.config.request_timeout_s:g} s",
            "timeout",
        ) from None
    rate = file_rate(body.response_format, m.sampling_rate)  # Opus: 48 kHz, the samples resampled
    headers["X-Audio-Sample-Rate"] = str(rate)
    headers["X-Audio-Samples"] = str(round(len(pcm) // (2 * m.channels) * rate / m.sampling_rate))
    data = await asyncio.to_thread(encode, bytes(pcm), body.response_format, m.sampling_rate, m.channels)
    return Response(data, media_type=media, headers=headers)


async def _collect(generation: Generation) -> bytes:
    pcm = bytearray()
    async for piece in _pcm_pieces(generation, None):
        pcm += piece
    return bytes(pcm)


async def _with_prefix(prefix: bytes, pieces: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The streamed body. The status line is already sent, so a failure can only end the stream early: it is
    logged here and the client sees fewer samples than ``X-Audio-Samples``."""
    if prefix:
        yield prefix
    try:
        async for piece in pieces:
            yield piece
    except ServiceError as exc:
        logger.warning("stream ended early: %s", exc.message)
    except Exception:
        logger.exception("stream ended early")


async def _pcm_pieces(generation: Generation, timeout_s: float | None) -> AsyncIterator[bytes]:
    """The generation's int16 pieces, made in a worker thread. Leaving early for any reason (client gone:
    Ray cancels this task; timeout; an error) cancels the request, so its rows are freed at the next step."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()

    def put(item: object) -> None:
        with contextlib.suppress(RuntimeError):  # the event loop is gone (replica shutting down): nobody listens
            loop.call_soon_threadsafe(queue.put_nowait, item)

    def pump() -> None:
        try:
            for piece in generation.pcm_chunks():
                put(piece)
        except BaseException as exc:  # delivered to the handler, which maps it to a response
            put(exc)
        else:
            put(_DONE)

    threading.Thread(target=pump, name="musicgen-onnx-request", daemon=True).start()
    deadline = None if timeout_s is None else loop.time() + timeout_s
    complete = False
    try:
        while True:
            wait = None if deadline is None else max(0.0, deadline - loop.time())
            try:
                item = await asyncio.wait_for(queue.get(), wait)
            except TimeoutError:
                generation.cancel("timeout")
                logger.warning("stream cancelled after request_timeout_s=%g s", timeout_s)
                return  # the client sees the stream end early; X-Audio-Samples said what was planned
            if item is _DONE:
                complete = True
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        if not complete:  # client gone (Ray cancelled this task), timeout or error: free its rows now
            generation.cancel()
