"""Ends the worker whose main loop has stopped turning: the one failure the loop cannot see itself.

A store that stops answering without closing its connections (a paused or frozen database, a route that drops
packets, a proxy that hangs) raises nothing: the loop waits in a socket read with no end, so neither the store's
backoff nor ``worker.store_outage_exit_seconds`` ever comes into play, and the worker holds its partitions and
leases while doing nothing. Past that same limit without a turn, this thread logs ``worker_stuck`` and ends the
process with the store's exit code (4), as after any store outage. It is a SIGKILL's equivalent, which the
worker survives by design: nothing past an unrecorded command was acknowledged, leases run out, the relay's open
transaction is aborted by its next leader. While the worker drains (stopping), it stands aside.
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
                 every: float = CHECK_SECONDS) -> None:
        self.limit = limit
        self.last_turn = last_turn  # time.monotonic() when the loop last started a turn
        self.stopping = stopping
        self.every = min(every, limit / 2)
        self.thread = threading.Thread(target=self._watch, name="oubli-watchdog", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _watch(self) -> None:
        while not self.stopping():
            time.sleep(self.every)
            stuck = time.monotonic() - self.last_turn()
            if stuck > self.limit and not self.stopping():
                log.error("worker_stuck", seconds=round(stuck), limit=round(self.limit))
                sys.stderr.flush()
                os._exit(STUCK_EXIT_CODE)  # a thread cannot raise into the blocked main thread
                return  # only when os._exit is replaced, as in tests
