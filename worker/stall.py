"""How long a step of the main loop has kept failing, and when to try it again.

The loop never sleeps (a sleep would stop heartbeats, the relay and the executor too): a failing
step is skipped until ``retry_at``. The wait doubles from ``base`` up to ``cap`` with each failure
in a row, with jitter so that a fleet that saw the same database restart does not come back in
step. ``since`` is when the failures began: the loop reads how long a stall has lasted and gives up
past a limit. Times are ``time.monotonic()`` values passed in, so tests need no clock.
"""

from __future__ import annotations

import random
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

from worker.core.errors import OubliError


@dataclass
class Stall:
    base: float = 1.0
    cap: float = 30.0
    jitter: Callable[[], float] = field(default=random.random, repr=False)  # in [0, 1)
    since: float | None = None
    failures: int = 0
    retry_at: float = 0.0

    @property
    def active(self) -> bool:
        return self.since is not None

    def failed(self, now: float) -> float:
        """Records one more failure; returns the seconds until the step is due again."""
        if self.since is None:
            self.since = now
        self.failures += 1
        ceiling = min(self.cap, self.base * 2.0 ** min(self.failures - 1, 32))
        wait = ceiling * (0.5 + 0.5 * self.jitter())  # "equal jitter": never less than half the ceiling
        self.retry_at = now + wait
        return wait

    def recovered(self) -> None:
        self.since, self.failures, self.retry_at = None, 0, 0.0

    def due(self, now: float) -> bool:
        return self.since is None or now >= self.retry_at

    def lasted(self, now: float) -> float:
        return 0.0 if self.since is None else now - self.since


@dataclass(frozen=True)
class Deadline:
    """One time budget that several steps share: each asks what is left, so together they end on time."""

    at: float  # a time.monotonic() value

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(time.monotonic() + seconds)

    def left(self, reserve: float = 0.0) -> float:
        """Seconds left, keeping ``reserve`` for the steps that come after; never negative."""
        return max(0.0, self.at - reserve - time.monotonic())


class StalledTooLong(OubliError):
    """The store (or intake) kept failing past the configured limit: the worker exits non-zero."""

    code = "stalled"


def error_kind(exc: BaseException) -> str:
    """The type of the error that really happened, for logs and labels: the cause of a ``StoreUnavailable``, the
    driver's own class under SQLAlchemy's wrapper (``QueryCanceled``, ``LockNotAvailable``, ...)."""
    cause = exc.__cause__ if isinstance(exc, OubliError) and exc.__cause__ is not None else exc
    if isinstance(cause, sa.exc.DBAPIError) and cause.orig is not None:
        return type(cause.orig).__name__
    return type(cause).__name__


def error_sqlstate(exc: BaseException) -> str | None:
    """The database's SQLSTATE code (``57P01``, ``08006``...), when the driver gives one: what failed, without
    the message, which may quote a statement's parameters."""
    cause = exc.__cause__ if isinstance(exc, OubliError) and exc.__cause__ is not None else exc
    orig = cause.orig if isinstance(cause, sa.exc.DBAPIError) else None
    sqlstate = getattr(orig, "sqlstate", None)
    return sqlstate if isinstance(sqlstate, str) and sqlstate else None


def error_site(exc: BaseException) -> str:
    """``file.py:line`` where the error was raised: enough to find it, and never the message, which may
    quote a command's personal data."""
    frames = traceback.extract_tb(exc.__traceback__)
    return f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "unknown"
