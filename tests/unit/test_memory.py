"""The worker gives the allocator's free pages back: the loop's trim, and that it really releases memory."""

from __future__ import annotations

import ctypes
import threading

import pytest

from worker import memory


def _rss_kb() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def test_the_trimmer_trims_at_most_once_per_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    trimmer = memory.Trimmer(every=60, monotonic=lambda: clock[0])
    calls: list[float] = []

    def trim() -> bool:
        calls.append(clock[0])
        return True

    monkeypatch.setattr(memory, "trim", trim)
    assert not trimmer.maybe_trim()
    clock[0] += 59.5
    assert not trimmer.maybe_trim()
    clock[0] += 0.5
    assert trimmer.maybe_trim()
    assert not trimmer.maybe_trim()
    clock[0] += 60
    assert trimmer.maybe_trim()
    assert calls == [1060.0, 1120.0]


@pytest.mark.skipif(memory._MALLOC_TRIM is None, reason="the C library has no malloc_trim (not glibc)")
def test_trim_releases_free_pages_held_below_a_live_block() -> None:
    """Blocks freed under a live one stay in the process (free() only shrinks the top); trim releases them.

    Done on a thread of its own, whose fresh arena nothing else uses, so the figure is this test's alone.
    """
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    figures: dict[str, int] = {}

    def churn() -> None:
        block = 64 * 1024  # below the mmap threshold: from the arena
        blocks = [libc.malloc(block) for _ in range(640)]  # 40 MiB
        for address in blocks:
            ctypes.memset(address, 1, block)  # touched: resident
        pin = libc.malloc(block)  # a live block above them: the arena's top cannot shrink past it
        ctypes.memset(pin, 1, block)
        for address in blocks[:-1]:
            libc.free(address)
        figures["freed"] = _rss_kb()
        assert memory.trim()
        figures["trimmed"] = _rss_kb()
        libc.free(blocks[-1])
        libc.free(pin)

    thread = threading.Thread(target=churn)
    thread.start()
    thread.join()
    assert figures["freed"] - figures["trimmed"] > 20_000, figures  # most of the 40 MiB went back
