"""The connector call pool: a fixed set of threads, all started up front, taking calls from one queue.

Why not ``concurrent.futures``: each call there is a ``Future`` (with its condition, lock and callback
list), and finding the calls that had ended meant scanning every call in flight. On the loop thread, at
1,000 calls in flight, that cost more than a no-op system's call itself (``bench/README.md``, fourth round).
Here an ended call is put on a queue, in the order the calls end, and the loop takes the lot at once.

The threads are daemons: a call still running when the worker exits (after its drain) is cut off with the
process, like a call under a ``SIGKILL``. Its lease is handed back at shutdown (``Executor.shutdown``; after a
``SIGKILL`` it runs out) and the task is run again, which every system's connector allows (calls are idempotent).

A call that never returns (a vendor or S3 trickling its reply) cannot be killed in Python: past its deadline
the executor ``abandon``s it. Its outcome, if it ever comes, is dropped, and a spare thread takes its place
(up to ``spare`` at once), so one stuck call does not cost the worker a slot for good. Past ``spare`` the
slot is ``lost`` until the call returns, and the executor claims that much less.
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

Call = TypeVar("Call")
Outcome = TypeVar("Outcome")


class CallPool(Generic[Call, Outcome]):
    """Runs ``run(call)`` on one of ``size`` threads for each submitted call. ``run`` must not raise: its
    failures are outcomes (the executor turns every exception into a ``Fail`` event)."""

    def __init__(self, size: int, run: Callable[[Call], Outcome], *, name: str, spare: int = 0,
                 monotonic: Callable[[], float] = time.monotonic, weight: Callable[[Call], int] = lambda _: 1) -> None:
        self._run = run
        self._weight = weight  # a call of weight n may run n deadlines before it is abandoned
        self._name = name
        self._spare = spare
        self._monotonic = monotonic
        # Guards the calls on threads and the abandoned ones: a call's end and its abandonment may race.
        self._lock = threading.Lock()
        # id(call) -> (call, when it started), in the order the calls started (the oldest first).
        self._running: dict[int, tuple[Call, float]] = {}
        # id(call) -> whether a spare thread replaced the one it holds; removed when the call returns.
        self._abandoned: dict[int, bool] = {}
        self._given_up = 0
        self.lost = 0  # abandoned calls still holding their thread with no spare in its place
        self._calls: queue.SimpleQueue[Call | None] = queue.SimpleQueue()
        self._ended: collections.deque[tuple[Call, Outcome]] = collections.deque()
        self._closed = False
        self._submitted = 0
        self._taken = 0
        self.call_ended = threading.Event()  # set whenever a call returns
        self.threads: list[threading.Thread] = []
        for _ in range(size):
            self._add_thread()

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
        """Calls submitted that have not ended yet (queued or on a thread), abandoned ones aside."""
        return self.outstanding() - len(self._ended)

    def outstanding(self) -> int:
        """Calls submitted and not taken yet: running, or ended and waiting for ``take``; abandoned ones aside."""
        return self._submitted - self._taken - self._given_up

    def abandoned(self) -> int:
        """Abandoned calls that have not returned yet: each holds a thread."""
        return len(self._abandoned)

    def abandoned_calls(self) -> list[Call]:
        """The abandoned calls that have not returned yet: they may still be at work on their system."""
        if not self._abandoned:  # the usual case, read without the lock: a loop turn asks every time
            return []
        with self._lock:
            return [call for key, (call, _) in self._running.items() if key in self._abandoned]

    def abandon_overdue(self, seconds: float) -> list[tuple[Call, float]]:
        """Gives up on every call that has run ``seconds`` (times its weight) or more: its outcome will never be
        taken. Returns them, with how long each ran. A call that ended meanwhile is not among them (``take`` has it)."""
        now = self._monotonic()
        overdue: list[tuple[Call, float]] = []
        with self._lock:
            for key, (call, started) in self._running.items():
                if now - started < seconds:
                    break  # the calls are in the order they started: the rest are younger (every weight is ≥ 1)
                if key in self._abandoned or now - started < seconds * self._weight(call):
                    continue
                replaced = len(self._abandoned) - self.lost < self._spare
                self._abandoned[key] = replaced
                if replaced:
                    self.threads = [t for t in self.threads if t.is_alive()]  # spares whose call came back
                    self._add_thread()
                else:
                    self.lost += 1
                self._given_up += 1
                overdue.append((call, now - started))
        return overdue

    def wait(self, timeout: float, count: int = 1) -> bool:
        """Blocks until a call ends and ``count`` ended calls wait to be taken, or ``timeout`` passes; True if so.

        A call must have ended since the last wait: ended calls the loop cannot take (the store is out) do not
        make it return at once, turn after turn."""
        deadline = self._monotonic() + timeout
        while True:
            ended = self.call_ended.wait(max(0.0, deadline - self._monotonic()))
            self.call_ended.clear()
            if not ended:
                return False
            if len(self._ended) >= count:
                return True

    def shutdown(self) -> None:
        """Drops the calls still queued; each thread ends after the call it is running."""
        self._closed = True
        for _ in self.threads:
            self._calls.put(None)

    def _add_thread(self) -> None:
        thread = threading.Thread(target=self._serve, name=f"{self._name}_{len(self.threads)}", daemon=True)
        self.threads.append(thread)
        thread.start()

    def _serve(self) -> None:
        while True:
            call = self._calls.get()
            if call is None or self._closed:
                return
            key = id(call)
            with self._lock:
                self._running[key] = (call, self._monotonic())
            outcome = self._run(call)
            with self._lock:
                del self._running[key]
                replaced = self._abandoned.pop(key, None)
                if replaced is None:
                    self._ended.append((call, outcome))
                elif not replaced:
                    self.lost -= 1  # this thread serves again: its slot is back
            # Not held while this thread waits: a call carries its subject's personal data, and a thousand
            # idle threads would keep the last thousand subjects alive.
            del call, outcome
            if replaced:
                return  # a spare took this thread's place when its call was abandoned
            if replaced is None:
                self.call_ended.set()
