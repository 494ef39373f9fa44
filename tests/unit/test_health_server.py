"""The worker's /healthz, /readyz and /metrics server: a silent client cannot hold its threads."""

from __future__ import annotations

import socket
import threading
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


def trickle_until_dropped(port: int, *, gap: float, limit: float) -> float | None:
    """Sends a request's headers a byte every ``gap`` seconds (slowloris), never finishing them. Returns when the
    server dropped the connection, in seconds from the connection, or None if it still held it after ``limit``."""
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Padding: " + b"a" * 10_000
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        started = time.monotonic()
        for byte in request:
            if time.monotonic() - started > limit:
                return None
            try:
                conn.sendall(bytes([byte]))
                conn.settimeout(gap)
                if conn.recv(1) == b"":
                    return time.monotonic() - started
            except TimeoutError:
                continue  # the server still waits for the rest: the next byte
            except (ConnectionResetError, BrokenPipeError):
                return time.monotonic() - started
    return None


def test_a_client_that_sends_its_headers_a_byte_at_a_time_is_dropped_at_the_deadline(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The idle timeout is per read, so a byte every so often met it never: such a client held a thread of the
    worker for good. The whole request now has a deadline from the connection's start."""
    monkeypatch.setattr(health, "IDLE_TIMEOUT_SECONDS", 1.0)
    monkeypatch.setattr(health, "REQUEST_DEADLINE_SECONDS", 1.5, raising=False)
    server = HealthServer("127.0.0.1", 0, live=lambda: True, ready=lambda: True)
    server.start()
    try:
        dropped = trickle_until_dropped(server.port, gap=0.2, limit=6.0)
        assert dropped is not None, "the server still held the connection"
        assert 1.0 < dropped < 4.0
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=5) as answer:
            assert answer.status == 200 and answer.read() == b"ok\n"  # a prompt client is answered as before
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


def _serving_threads() -> int:
    return sum(1 for thread in threading.enumerate() if "process_request_thread" in thread.name)


def test_a_flood_of_connections_holds_a_bounded_number_of_threads_and_probes_answer_after_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A thread a connection, each held up to the request's deadline: a flood of silent connections used to start
    a thread apiece in the worker's process. Past the cap a connection is closed at once."""
    monkeypatch.setattr(health, "MAX_CONNECTIONS", 4, raising=False)
    monkeypatch.setattr(health, "IDLE_TIMEOUT_SECONDS", 3.0)
    monkeypatch.setattr(health, "REQUEST_DEADLINE_SECONDS", 3.0, raising=False)
    before = _serving_threads()
    server = HealthServer("127.0.0.1", 0, live=lambda: True, ready=lambda: True)
    server.start()
    flood: list[socket.socket] = []
    try:
        flood = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(40)]
        most, until = 0, time.monotonic() + 2  # the server has accepted the whole flood by then
        while time.monotonic() < until:
            most = max(most, _serving_threads() - before)
            time.sleep(0.01)
        assert 0 < most <= 4
        turned_away = 0
        for conn in flood:
            conn.settimeout(5)
            try:
                if conn.recv(1) == b"":
                    turned_away += 1
            except ConnectionResetError:
                turned_away += 1
        assert turned_away == 40  # the cap's worth at their deadline, the rest at once
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=5) as answer:
            assert answer.status == 200
    finally:
        for conn in flood:
            conn.close()
        server.stop()
