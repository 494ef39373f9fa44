"""The connector call pool: a fixed set of threads, all started up front, taking calls from one queue.

Why not ``concurrent.futures``: each call there is a ``Future`` (with its condition, lock and callback
list), and finding the calls that had ended meant scanning every call in flight. On the loop thread, at
1,000 calls in flight, that cost more than a no-op system's call itself (``bench/README.md``, fourth round).
Here an ended call is put on a queue, in the order the calls end, and the loop takes the lot at once.

The threads are daemons: a call still running when the worker exits (after its drain) is cut off with the
process, like a call under a ``SIGKILL``. Its lease runs out and the task is run again, which every system's
connector allows (calls are idempotent).
"""

from __future__ import annotations

import collections
import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

Call = TypeVar("Call")
Outcome = TypeVar("Outcome")


class CallPool(Generic[Call, Outcome]):
    """Runs ``run(call)`` on one of ``size`` threads for each submitted call. ``run`` must not raise: its
    failures are outcomes (the executor turns every exception into a ``Fail`` event)."""

    def __init__(self, size: int, run: Callable[[Call], Outcome], *, name: str) -> None:
        self._run = run
        self._calls: queue.SimpleQueue[Call | None] = queue.SimpleQueue()
        self._ended: collections.deque[tuple[Call, Outcome]] = collections.deque()
        self._closed = False
        self._submitted = 0
        self._taken = 0
        self.call_ended = threading.Event()  # set whenever a call returns
        self.threads = [threading.Thread(target=self._serve, name=f"{name}_{i}", daemon=True) for i in range(size)]
        for thread in self.threads:
            thread.start()

    def submit(self, call: Call) -> None:
        self._submitted += 1
        self._calls.put(call)

    def take(self, limit: int) -> list[tuple[Call, Outcome]]:
        """The calls that have ended since the last ``take`` (at most ``limit``), in the order they ended."""
        ended = self._ended
        taken = [ended.popleft() for _ in range(min(limit, len(ended)))]
        self._taken += len(taken)
        return taken

    def running(self) -> int:
        """Calls submitted that have not ended yet (queued or on a thread)."""
        return self._submitted - self._taken - len(self._ended)

    def wait(self, timeout: float) -> bool:
        """Blocks until a call ends or ``timeout`` passes; True if one ended."""
        ended = self.call_ended.wait(timeout)
        self.call_ended.clear()
        return ended

    def shutdown(self) -> None:
        """Drops the calls still queued; each thread ends after the call it is running."""
        self._closed = True
        for _ in self.threads:
            self._calls.put(None)

    def _serve(self) -> None:
        while True:
            call = self._calls.get()
            if call is None or self._closed:
                return
            self._ended.append((call, self._run(call)))
            # Not held while this thread waits: a call carries its subject's personal data, and a thousand
            # idle threads would keep the last thousand subjects alive.
            del call
            self.call_ended.set()
