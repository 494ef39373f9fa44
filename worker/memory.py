"""Hands the C allocator's free pages back to the system, now and then, so that a worker's RSS stays flat.

glibc's malloc gives memory back only from the top of an arena. The loop thread allocates and frees many
mid-sized buffers (driver rows, statement parameters, receipt bodies); over hours the freed ones end up as
free chunks below live ones, and RSS rose about 0.3 MB per 10,000 requests while the memory in use did
not (bench/README.md, the million-request soak). ``malloc_trim(0)`` releases every whole free page inside
every arena (``madvise``), which is exactly that memory. Where the C library has no ``malloc_trim`` (musl,
macOS), ``trim`` does nothing.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable

TRIM_SECONDS = 60.0  # a trim of the worker's arenas takes a few ms; once a minute is well inside the drift


def _load_trim() -> Callable[[int], int] | None:
    try:
        function = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    return function


_MALLOC_TRIM = _load_trim()


def trim() -> bool:
    """Releases the allocator's free pages now. True when the C library has the call (glibc)."""
    if _MALLOC_TRIM is None:
        return False
    _MALLOC_TRIM(0)
    return True


class Trimmer:
    """``maybe_trim`` trims at most once per ``every`` seconds: cheap enough to call on every loop turn."""

    def __init__(self, every: float = TRIM_SECONDS, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.every = every
        self.monotonic = monotonic
        self.last = monotonic()

    def maybe_trim(self) -> bool:
        now = self.monotonic()
        if now - self.last < self.every:
            return False
        self.last = now
        return trim()
