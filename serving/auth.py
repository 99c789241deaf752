"""API keys for the served app: who may call it, how often, and how many clips at once (docs/design.md §22).

Framework-free like ``service``: the deployment reads the ``Authorization`` header and hands it here. The keys
file holds SHA-256 digests, never keys: a presented key is hashed and compared with every entry through
``hmac.compare_digest``, so neither the file nor the comparison reveals a key. Keys are only ever shown once,
by ``musicgen-onnx serve-keys add``.

The file (JSON; ``serve-keys`` writes it)::

    {"version": 1,
     "defaults": {"rate_per_minute": 60, "burst": 10, "max_concurrent": 4},
     "keys": [{"id": "alice", "sha256": "<64 hex>", "status": "active"},
              {"id": "bob", "sha256": "<64 hex>", "status": "revoked", "max_concurrent": 1}]}

A replica re-reads the file when it changes (checked at most once per ``reload_interval_s``), so revoking a
key needs no restart; a file that became invalid is logged and the keys read before stay in force. Limits are
per replica: with N replicas a key may get up to N times its rate (each replica keeps its own buckets).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import math
import os
import re
import secrets
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from enum import Enum
from pathlib import Path
from typing import Any

from .service import ServiceError

logger = logging.getLogger("musicgen_onnx")

__all__ = [
    "KEYS_FILE_ENV",
    "AccessControl",
    "AccessDeniedError",
    "KeyEntry",
    "KeyFileError",
    "KeyStatus",
    "Lease",
    "Limits",
    "add_key",
    "hash_key",
    "load_keys",
    "revoke_key",
]

#: The environment variable ``musicgen-onnx serve`` reads when ``--api-keys`` is not given.
KEYS_FILE_ENV = "MUSICGEN_ONNX_API_KEYS_FILE"
KEY_PREFIX = "mgk_"  # so a leaked key is recognisable in logs and secret scanners
FILE_VERSION = 1
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class KeyFileError(ValueError):
    """The keys file cannot be used: the message names the file and what is wrong in it."""


class KeyStatus(str, Enum):
    ACTIVE = "active"
    REVOKED = "revoked"


@dataclass(frozen=True)
class Limits:
    """What one key may do on one replica: a token bucket of ``burst`` requests refilled at
    ``rate_per_minute``, and at most ``max_concurrent`` generations (streamed or whole) in flight."""

    rate_per_minute: float = 60.0
    burst: int = 10
    max_concurrent: int = 4

    def __post_init__(self) -> None:
        rate = self.rate_per_minute
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate) or rate <= 0:
            raise ValueError(f"rate_per_minute must be a number > 0, got {rate!r}")
        for name in ("burst", "max_concurrent"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


LIMIT_FIELDS = tuple(f.name for f in fields(Limits))


@dataclass(frozen=True)
class KeyEntry:
    key_id: str
    sha256: str
    status: KeyStatus
    limits: Limits


class AccessDeniedError(ServiceError):
    """401 / 403 / 429 for a request; ``key_id`` is the key it came with when that is known (403, 429)."""

    def __init__(self, status: int, message: str, kind: str, key_id: str | None = None, headers=None) -> None:
        super().__init__(status, message, kind, headers)
        self.key_id = key_id


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


# ---- the file ----------------------------------------------------------------------------------------------
def load_keys(path: str | os.PathLike) -> dict[str, KeyEntry]:
    """The file's entries by key id; raises KeyFileError naming the file and the problem."""
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KeyFileError(f"API keys file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise KeyFileError(f"API keys file {path} cannot be read as JSON: {exc}") from None
    try:
        return _parse(document)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"API keys file {path}: {exc}") from None


def _parse(document: Any) -> dict[str, KeyEntry]:
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError('expected a JSON object {"version": 1, "defaults": {...}, "keys": [...]}')
    if document.get("version", FILE_VERSION) != FILE_VERSION:
        raise ValueError(f"version must be {FILE_VERSION}, got {document.get('version')!r}")
    defaults = document.get("defaults") or {}
    if not isinstance(defaults, dict) or set(defaults) - set(LIMIT_FIELDS):
        raise ValueError(f"defaults may set {', '.join(LIMIT_FIELDS)}; got {defaults!r}")
    base = Limits(**defaults)
    entries: dict[str, KeyEntry] = {}
    digests: set[str] = set()
    known = {"id", "sha256", "status", "created", *LIMIT_FIELDS}
    for i, item in enumerate(document["keys"]):
        if not isinstance(item, dict):
            raise ValueError(f"keys[{i}] must be an object")
        unknown = sorted(set(item) - known)
        if unknown:
            raise ValueError(f"keys[{i}] has unknown fields {unknown}; known: {', '.join(sorted(known))}")
        key_id, digest = item.get("id"), item.get("sha256")
        if not isinstance(key_id, str) or not _ID.match(key_id):
            raise ValueError(
                f"keys[{i}].id must be 1-64 letters, digits or _.@- (a letter or digit first), got {key_id!r}"
            )
        if key_id in entries:
            raise ValueError(f"key id {key_id!r} appears twice")
        if not isinstance(digest, str) or not _HEX64.match(digest):
            raise ValueError(f"keys[{i}] ({key_id}): sha256 must be 64 lowercase hex digits (the key's SHA-256)")
        if digest in digests:
            raise ValueError(f"keys[{i}] ({key_id}): the same key digest appears twice")
        try:
            status = KeyStatus(item.get("status", KeyStatus.ACTIVE.value))
        except ValueError:
            raise ValueError(
                f"keys[{i}] ({key_id}): status must be one of {', '.join(s.value for s in KeyStatus)}"
            ) from None
        limits = replace(base, **{name: item[name] for name in LIMIT_FIELDS if name in item})
        entries[key_id] = KeyEntry(key_id, digest, status, limits)
        digests.add(digest)
    return entries


def _read_document(path: Path) -> dict:
    if not path.exists():
        return {"version": FILE_VERSION, "defaults": {}, "keys": []}
    load_keys(path)  # refuse to edit a file that is not valid
    return json.loads(path.read_text(encoding="utf-8"))


def _write_document(path: Path, document: dict) -> None:
    """Atomically, readable by its owner only (the digests are not secrets, but nobody else needs them)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(document, f, indent=2)
            f.write("\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def add_key(path: str | os.PathLike, key_id: str, **limits: Any) -> str:
    """Add an active key ``key_id`` (optional per-key limits) to the file, creating it; returns the key, which
    is stored nowhere: only its SHA-256 goes into the file."""
    path = Path(path)
    document = _read_document(path)
    if any(item.get("id") == key_id for item in document["keys"]):
        raise KeyFileError(f"API keys file {path} already has a key {key_id!r}")
    key = new_key()
    item = {"id": key_id, "sha256": hash_key(key), "status": KeyStatus.ACTIVE.value}
    item["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    item.update({name: value for name, value in limits.items() if value is not None})
    _parse({**document, "keys": [*document["keys"], item]})  # the new entry is valid before anything is written
    document["keys"].append(item)
    _write_document(path, document)
    return key


def revoke_key(path: str | os.PathLike, key_id: str) -> None:
    path = Path(path)
    document = _read_document(path)
    for item in document["keys"]:
        if item.get("id") == key_id:
            item["status"] = KeyStatus.REVOKED.value
            _write_document(path, document)
            return
    raise KeyFileError(f"API keys file {path} has no key {key_id!r}")


# ---- per-request checks -------------------------------------------------------------------------------------
class _Bucket:
    """A token bucket: ``burst`` tokens, refilled continuously at ``rate_per_minute``."""

    def __init__(self, limits: Limits, now: float) -> None:
        self.tokens, self.updated = float(limits.burst), now

    def take(self, limits: Limits, now: float) -> float:
        """Take a token: 0.0, or the seconds until one is available (nothing taken)."""
        per_s = limits.rate_per_minute / 60.0
        self.tokens = min(float(limits.burst), self.tokens + (now - self.updated) * per_s)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / per_s


@dataclass(eq=False)
class Lease:
    """A generation counted against its key's ``max_concurrent`` until ``release`` (idempotent)."""

    key_id: str | None
    _release: Callable[[], None] | None = None

    def release(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()


class AccessControl:
    """One replica's keys, buckets and in-flight counts. ``path`` None: keys are off, everything is admitted."""

    def __init__(
        self,
        path: str | None,
        retry_after_s: int = 2,
        reload_interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = None if path is None else Path(path)
        self.retry_after_s, self.reload_interval_s, self.clock = retry_after_s, reload_interval_s, clock
        self._lock = threading.Lock()
        self._buckets: dict[str, _Bucket] = {}
        self._running: dict[str, int] = {}
        self._entries: dict[str, KeyEntry] = {}
        self._stamp: tuple[int, int] | None = None
        self._checked = -math.inf
        if self.path is not None:
            self._entries = load_keys(self.path)  # a replica with a bad file must not start
            self._stamp = self._file_stamp()
            self._checked = clock()
            logger.info("API keys on: %d key(s) from %s", len(self._entries), self.path)

    @property
    def enabled(self) -> bool:
        return self.path is not None

    def identify(self, authorization: str | None) -> KeyEntry | None:
        """The active key of an ``Authorization: Bearer <key>`` header; None when keys are off.
        Raises AccessDeniedError: 401 (no key, malformed header, unknown key), 403 (revoked key)."""
        if self.path is None:
            return None
        self._maybe_reload()
        scheme, _, key = (authorization or "").strip().partition(" ")
        key = key.strip()
        if not authorization:
            raise _unauthorized("this server needs an API key: send it as 'Authorization: Bearer <key>'")
        if scheme.lower() != "bearer" or not key:
            raise _unauthorized("the Authorization header must be 'Bearer <key>'")
        digest = hash_key(key)
        found = None
        for entry in self._entries.values():  # every entry is compared: the time does not depend on which matched
            if hmac.compare_digest(digest, entry.sha256):
                found = entry
        if found is None:
            raise _unauthorized("the API key is not valid")
        if found.status is KeyStatus.REVOKED:
            raise AccessDeniedError(403, f"API key {found.key_id!r} has been revoked", "permission_error", found.key_id)
        return found

    def admit(self, authorization: str | None) -> Lease:
        """``identify``, then the key's rate (token bucket) and concurrent generations; 429 with Retry-After
        naming the limit. The returned lease must be released when the generation is over."""
        entry = self.identify(authorization)
        if entry is None:
            return Lease(None)
        limits, key_id = entry.limits, entry.key_id
        with self._lock:
            running = self._running.get(key_id, 0)
            if running >= limits.max_concurrent:
                raise _limited(
                    key_id,
                    f"API key {key_id!r} has {running} generation(s) in flight on this replica "
                    f"(max_concurrent={limits.max_concurrent}); retry after {self.retry_after_s} s",
                    self.retry_after_s,
                )
            now = self.clock()
            bucket = self._buckets.setdefault(key_id, _Bucket(limits, now))
            wait = bucket.take(limits, now)
            if wait > 0:
                after = max(1, math.ceil(wait))
                raise _limited(
                    key_id,
                    f"API key {key_id!r} is over its request rate (rate_per_minute={limits.rate_per_minute:g}, "
                    f"burst={limits.burst}); retry after {after} s",
                    after,
                )
            self._running[key_id] = running + 1
        return Lease(key_id, lambda: self._done(key_id))

    def running(self, key_id: str) -> int:
        with self._lock:
            return self._running.get(key_id, 0)

    def _done(self, key_id: str) -> None:
        with self._lock:
            self._running[key_id] = max(0, self._running.get(key_id, 0) - 1)

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            stat = self.path.stat()
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_size

    def _maybe_reload(self) -> None:
        now = self.clock()
        with self._lock:
            if now - self._checked < self.reload_interval_s:
                return
            self._checked = now
            stamp = self._file_stamp()
            if stamp == self._stamp:
                return
            self._stamp = stamp
        try:
            entries = load_keys(self.path)
        except KeyFileError as exc:
            logger.error("API keys not reloaded, the %d read before stay in force: %s", len(self._entries), exc)
            return
        with self._lock:
            self._entries = entries
        logger.info("API keys reloaded: %d key(s) from %s", len(entries), self.path)


def _unauthorized(message: str) -> AccessDeniedError:
    return AccessDeniedError(401, message, "authentication_error", headers={"WWW-Authenticate": "Bearer"})


def _limited(key_id: str, message: str, retry_after: int) -> AccessDeniedError:
    return AccessDeniedError(429, message, "rate_limit_exceeded", key_id, {"Retry-After": str(retry_after)})
