"""The worker's /healthz, /readyz and /metrics server: a silent client cannot hold its threads."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request

import pytest

from worker import health
from worker.health import HealthServer


def test_a_connection_that_sends_nothing_is_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each connection has a thread of the worker's own process; one that connected and stayed silent held it
    for good, and a few thousand left the worker unable to start the threads its calls need."""
    monkeypatch.setattr(health, "IDLE_TIMEOUT_SECONDS", 0.5, raising=False)
    server = HealthServer("127.0.0.1", 0, live=lambda: True, ready=lambda: True)
    server.start()
    try:
        silent = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(3)]
        started = time.monotonic()
        for conn in silent:
            assert conn.recv(1) == b""  # closed by the server, not by our 5 s timeout (which would raise)
            conn.close()
        assert time.monotonic() - started < 4
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=5) as answer:
            assert answer.status == 200 and answer.read() == b"ok\n"
    finally:
        server.stop()


def test_probes_answer_by_path_whatever_the_query_and_to_head_too() -> None:
    """A load balancer may add a query string or send HEAD: answered 404 (an exact match on the whole target),
    a healthy worker read as down."""
    ready = [True]
    server = HealthServer("127.0.0.1", 0, live=lambda: True, ready=lambda: ready[0])
    server.start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        with urllib.request.urlopen(f"{base}/healthz?probe=lb&t=1", timeout=5) as answer:
            assert answer.status == 200 and answer.read() == b"ok\n"
        head = urllib.request.Request(f"{base}/readyz?x=1", method="HEAD")
        with urllib.request.urlopen(head, timeout=5) as answer:
            assert answer.status == 200 and answer.read() == b""
        ready[0] = False
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{base}/readyz?x=1", timeout=5)  # noqa: S310 - our own server
        assert refused.value.code == 503
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"{base}/nothing?x=1", timeout=5)  # noqa: S310 - our own server
        assert missing.value.code == 404
        with urllib.request.urlopen(f"{base}/metrics?name[]=x", timeout=5) as answer:
            assert answer.status == 200 and b"# HELP" in answer.read()
    finally:
        server.stop()
