"""Measure and bound the exporter's memory: peak anonymous RSS next to max RSS, and glibc's freed-memory reuse.

Max RSS (``ru_maxrss``, what ``/usr/bin/time`` reports) counts the pages of memory-mapped files: the
checkpoint transformers maps, the ``.data`` files onnxruntime maps. Those are reclaimable page cache. The
memory an export really needs is its peak *anonymous* RSS (``RssAnon`` in /proc/self/status), which
:class:`PeakMemory` samples on a background thread.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import resource
import sys
import threading

logger = logging.getLogger("musicgen_onnx")

_M_MMAP_THRESHOLD = -3


def return_freed_memory_to_os(threshold: int = 128 * 1024) -> bool:
    """Make glibc serve allocations >= ``threshold`` bytes with their own mmap (returned to the OS on free).

    By default glibc raises that threshold to the size of the largest block freed so far (up to 32 MB):
    after the first few weights are freed, every later one comes from the heap, and a heap freed in the
    middle is not given back: writing the weights of stereo-small one at a time left ~1 GB of anonymous
    memory behind. Setting the threshold explicitly turns that adjustment off. Process-wide; a no-op
    (returning False) where the C library is not glibc.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, int(threshold)))
    except (OSError, AttributeError):
        return False


def anon_rss_bytes() -> int | None:
    """Current anonymous RSS of this process (Linux), else None."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def max_rss_bytes() -> int:
    """Lifetime max RSS (file-backed pages included), as ``/usr/bin/time -v`` reports it."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


class PeakMemory:
    """Sample anonymous RSS every ``interval`` seconds while the ``with`` block runs."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.peak_anon: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while True:
            value = anon_rss_bytes()
            if value is None:
                return
            self.peak_anon = max(self.peak_anon or 0, value)
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> PeakMemory:
        self._thread = threading.Thread(target=self._sample, name="peak-anon-rss", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        value = anon_rss_bytes()
        if value is not None:
            self.peak_anon = max(self.peak_anon or 0, value)
