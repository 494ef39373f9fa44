"""Shutdown keeps to one budget (drain_seconds + a margin), however the broker behaves."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from worker import config, loop, shutdown
from worker.app import Worker


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])  # nothing listens there once the socket is closed


def test_close_ends_within_drain_plus_margin_when_the_broker_is_unreachable(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    assert loop.SHUTDOWN_MARGIN_SECONDS < 15  # the chart's grace period is drain + shutdownMarginSeconds (>= 15)
    margin = 4.0  # a smaller margin than production's, for a quick test: the budget logic is the same
    monkeypatch.setattr(loop, "SHUTDOWN_MARGIN_SECONDS", margin)
    monkeypatch.setattr(loop, "LEAVE_RESERVE_SECONDS", 1.0)
    settings = config.build({
        "subject_key": "k", "store_url": f"sqlite:///{tmp_path / 'store.db'}",
        "kafka": {"bootstrap_servers": f"127.0.0.1:{closed_port()}"},
        "worker": {"http_port": 0, "drain_seconds": 1, "poll_seconds": 0.05},
    }, env={})
    worker = Worker(settings, migrate=True, serve_http=False)
    worker.start()
    for _ in range(10):
        worker.run_once()
    # The worst case: a call that never ends, and a batch in flight that librdkafka would flush until the
    # timeout it is given runs out (as it does when the broker is gone).
    worker.executor.busy = lambda: 1  # type: ignore[method-assign]
    asked: list[float] = []

    def flush_until_timeout(timeout: float) -> None:
        asked.append(timeout)
        time.sleep(timeout)

    worker.relay.drain = flush_until_timeout  # type: ignore[method-assign]
    started = time.monotonic()
    worker.close()
    took = time.monotonic() - started
    assert 1 + margin - 1.5 <= took <= 1 + margin + 2, took  # the relay had its turn; 2 s of slack for CI
    assert len(asked) == 2 and sum(asked) <= margin - 1.0  # one deadline, shared (before: 10 s each)


def test_a_signal_during_start_up_asks_for_a_stop_and_ends_a_wait_at_once() -> None:
    """``worker.shutdown``: the handler only sets the request; a start-up wait (for the store) ends on it."""
    before = signal.getsignal(signal.SIGTERM)
    with shutdown.listening(shutdown.StopRequest()) as stop:
        stop.sleep(0)  # nothing asked yet: returns
        threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM)).start()
        started = time.monotonic()
        with pytest.raises(shutdown.StoppedBeforeStart):
            stop.sleep(30)
        assert stop.asked and time.monotonic() - started < 5
    assert signal.getsignal(signal.SIGTERM) is before  # restored: the test run itself is not changed
