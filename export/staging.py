"""Where an export is written before it becomes the output directory, and what a killed export left behind.

An export writes into a hidden sibling ``.NAME.tmp-XXXXXXXX`` and renames it into place at the end, so a
failed export never leaves a half-written model directory. A process killed with SIGKILL cannot clean up,
and its temp directory is as big as the export (2.4 GB for stereo-small). Each live export therefore holds
an exclusive ``flock`` on ``.owner.lock`` inside its temp directory; the kernel drops that lock when the
process dies, however it dies. The next export of the same target removes every sibling temp directory
whose lock it can take (nobody owns it), and leaves alone those whose lock is held (a live export).
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import time
import uuid
from pathlib import Path

logger = logging.getLogger("musicgen_onnx")

LOCK_NAME = ".owner.lock"
#: A temp directory without a lock file is either from an exporter that predates the lock or one created a
#: moment ago whose lock is not yet taken; only the former is old.
UNLOCKED_GRACE_S = 600.0


def temp_dirs(output_dir: Path) -> list[Path]:
    """Every export temp directory of ``output_dir`` (from any process, live or dead)."""
    return sorted(p for p in output_dir.parent.glob(f".{output_dir.name}.tmp-*") if p.is_dir())


def _owned(directory: Path) -> bool:
    """True when a live process holds the directory's lock (or it is too new to judge)."""
    lock = directory / LOCK_NAME
    try:
        fd = os.open(lock, os.O_RDWR)
    except FileNotFoundError:
        return time.time() - directory.stat().st_mtime < UNLOCKED_GRACE_S
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing also releases the probe's lock
    return False


def remove_stale_temp_dirs(output_dir: Path) -> list[Path]:
    """Remove the temp directories of ``output_dir`` that no live export owns; returns what was removed."""
    removed = []
    for directory in temp_dirs(output_dir):
        if _owned(directory):
            logger.info("leaving %s alone: another export is writing it", directory)
            continue
        size = sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())
        shutil.rmtree(directory, ignore_errors=True)
        logger.warning("removed %s (%.1f MB) left by an interrupted export", directory, size / 1e6)
        removed.append(directory)
    return removed


class StagingDir:
    """A locked temp directory beside ``output_dir``: ``with StagingDir(out) as tmp: ...; stage.commit()``.

    Leaving the block without ``commit`` (an exception, Ctrl-C) deletes the directory.
    """

    def __init__(self, output_dir: Path) -> None:
        self.output_dir = output_dir
        self.path = output_dir.with_name(f".{output_dir.name}.tmp-{uuid.uuid4().hex[:8]}")
        self._fd: int | None = None
        self._committed = False

    def __enter__(self) -> StagingDir:
        self.output_dir.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_dirs(self.output_dir)
        self.path.mkdir()
        self._fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        return self

    def commit(self) -> None:
        """Swap the finished directory in; an old export is removed only after the new one is in place."""
        (self.path / LOCK_NAME).unlink()
        trash = None
        if self.output_dir.exists():
            trash = self.output_dir.with_name(f".{self.output_dir.name}.old-{uuid.uuid4().hex[:8]}")
            self.output_dir.rename(trash)
        self.path.rename(self.output_dir)
        self._committed = True
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)

    def __exit__(self, *exc_info: object) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if not self._committed:
            shutil.rmtree(self.path, ignore_errors=True)
