"""SIGTERM and SIGINT as a request to stop, heard from the worker's first moment.

A pod is often terminated while its worker still starts: waiting for a store that is out, or running the schema's
migrations. Python's default handler would end the process there by the signal (exit 143), mid-migration too.
With ``listening`` installed first, the signal only sets ``StopRequest``: a wait for the store ends at once
(``StoppedBeforeStart``), a migration runs to its end, and the loop then drains and exits 0 as after any SIGTERM.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StoppedBeforeStart(Exception):
    """A stop was asked for while the worker waited to start."""


class StopRequest:
    """Set once by a signal handler (or a test); read by the loop and by waits that must end early."""

    def __init__(self) -> None:
        self._asked = threading.Event()

    @property
    def asked(self) -> bool:
        return self._asked.is_set()

    def ask(self) -> None:
        self._asked.set()

    def sleep(self, seconds: float) -> None:
        """Sleeps ``seconds``; raises ``StoppedBeforeStart`` as soon as a stop is asked for."""
        if self._asked.wait(max(seconds, 0.0)):
            raise StoppedBeforeStart


@contextlib.contextmanager
def listening(stop: StopRequest) -> Iterator[StopRequest]:
    """Turns SIGTERM and SIGINT into ``stop.ask()`` until the block ends, then restores the previous handlers."""

    def handler(_signum: int, _frame: FrameType | None) -> None:
        stop.ask()

    previous = {sig: signal.signal(sig, handler) for sig in SIGNALS}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
