"""SIGTERM and SIGINT as a request to stop, heard from the worker's first moment.

A pod is often terminated while its worker still starts: waiting for a store that is out, or running the schema's
migrations. Python's default handler would end the process there by the signal (exit 143), mid-migration too.
With ``listening`` installed first, the signal only sets ``StopRequest``: a wait for the store ends at once
(``StoppedBeforeStart``), a migration runs to its end, and the loop then drains and exits 0 as after any SIGTERM.

Earlier still, the ``oubli`` command holds both signals (``hold``) while Python imports the CLI, about a second.
The worker takes what was held over as a stop; any other command gets it delivered (``release_held``) as soon as
it is known not to be the worker, so ``oubli web`` or ``oubli dlq replay`` still end by the signal.
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


class _Held:
    def __init__(self) -> None:
        self.received: list[int] = []
        self.previous = {sig: signal.signal(sig, self._keep) for sig in SIGNALS}

    def _keep(self, signum: int, _frame: FrameType | None) -> None:
        self.received.append(signum)


_held: _Held | None = None


def hold() -> None:
    """Keeps SIGTERM and SIGINT from here on, until the worker takes them over or ``release_held``."""
    global _held  # noqa: PLW0603  # signal handlers are the process's, and so is what they held
    if _held is None:
        _held = _Held()


def _take_held() -> _Held | None:
    global _held  # noqa: PLW0603
    held, _held = _held, None
    return held


def release_held() -> None:
    """Restores the handlers there were before ``hold``, then delivers a signal that was held (a no-op if none)."""
    held = _take_held()
    if held is None:
        return
    for sig, old in held.previous.items():
        signal.signal(sig, old)
    if held.received:
        signal.raise_signal(held.received[0])


@contextlib.contextmanager
def listening(stop: StopRequest) -> Iterator[StopRequest]:
    """Turns SIGTERM and SIGINT into ``stop.ask()`` until the block ends, then restores the previous handlers.

    A signal held since ``hold`` is a stop asked for already."""

    def handler(_signum: int, _frame: FrameType | None) -> None:
        stop.ask()

    previous = {sig: signal.signal(sig, handler) for sig in SIGNALS}
    held = _take_held()
    if held is not None:
        previous = held.previous
        if held.received:
            stop.ask()
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
