"""Ends the worker whose main loop has stopped turning: the one failure the loop cannot see itself.

A store that stops answering without closing its connections (a paused or frozen database, a route that drops
packets, a proxy that hangs) raises nothing: the loop waits in a socket read with no end, so neither the store's
backoff nor ``worker.store_outage_exit_seconds`` ever comes into play, and the worker holds its partitions and
leases while doing nothing. Past that same limit without a turn, this thread logs ``worker_stuck`` and ends the
process with the store's exit code (4), as after any store outage. It is a SIGKILL's equivalent, which the
worker survives by design: nothing past an unrecorded command was acknowledged, leases run out, the relay's open
transaction is aborted by its next leader. Once a stop is asked, the bound is the shutdown's own budget instead
(``Loop.close``: drain_seconds and its margin), which a stop asked during such a read would otherwise never start.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable

import structlog

log = structlog.get_logger("oubli.worker")

STUCK_EXIT_CODE = 4  # "unavailable", as worker.support.UNAVAILABLE: the store (or broker) stopped answering
CHECK_SECONDS = 1.0


class Watchdog:
    def __init__(self, limit: float, *, last_turn: Callable[[], float], stopping: Callable[[], bool],
                 shutdown: float, every: float = CHECK_SECONDS) -> None:
        self.limit = limit
        self.last_turn = last_turn  # time.monotonic() when the loop last started a turn
        self.stopping = stopping
        self.shutdown = shutdown  # once a stop is asked, how long the process may still take (Loop.close's budget)
        self.every = min(every, limit / 2)
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._watch, name="oubli-watchdog", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        """The loop closed: nothing left to watch."""
        self.done.set()

    def _watch(self) -> None:
        stop_asked: float | None = None
        while not self.done.wait(self.every):
            now = time.monotonic()
            if self.stopping():
                # A SIGTERM met while the loop sits in a silent read only sets a flag: the drain never starts.
                stop_asked = stop_asked if stop_asked is not None else now
                waited, limit = now - stop_asked, self.shutdown
            else:
                waited, limit = now - self.last_turn(), self.limit
            if waited > limit and not self.done.is_set():
                log.error("worker_stuck", seconds=round(waited), limit=round(limit), stopping=stop_asked is not None)
                sys.stderr.flush()
                os._exit(STUCK_EXIT_CODE)  # a thread cannot raise into the blocked main thread
                return  # only when os._exit is replaced, as in tests
