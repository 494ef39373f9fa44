"""``oubli web`` under uvicorn as it is served (``server_options``): a client that sends its request a byte at a
time, or nothing at all, is dropped at the request deadline instead of holding its connection for good."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from devkit.pipeline import raw_settings
from tests.unit.test_health_server import trickle_until_dropped
from worker import config
from worker.store import db
from worker.web import server as web_server
from worker.web.app import Services, create_app
from worker.web.confirmations import Confirmations
from worker.web.deadline import DeadlineH11Protocol
from worker.web.server import server_options

pytestmark = pytest.mark.timeout(60)
DEADLINE = 1.5


@pytest.fixture
def port(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    monkeypatch.setattr(DeadlineH11Protocol, "deadline_seconds", DEADLINE)
    yield from _serving(tmp_path)


def _serving(tmp_path: Path) -> Iterator[int]:
    settings = config.build(raw_settings(store_url=f"sqlite:///{tmp_path / 'store.db'}", bootstrap="127.0.0.1:1",
                                         systems={}), env={})
    engine = db.create_engine(settings.store_url)
    db.migrate(engine)
    app = create_app(Services(settings=settings, engine=engine, confirmations=Confirmations(engine), callback=None))
    server = uvicorn.Server(uvicorn.Config(app, **server_options(settings.web, host="127.0.0.1", port=0)))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    yield server.servers[0].sockets[0].getsockname()[1]
    server.should_exit = True
    thread.join(15)
    engine.dispose()


def test_a_client_that_sends_its_headers_a_byte_at_a_time_is_dropped_at_the_deadline(port: int) -> None:
    dropped = trickle_until_dropped(port, gap=0.2, limit=3 * DEADLINE + 2)
    assert dropped is not None, "uvicorn still held the connection"
    assert DEADLINE - 0.5 < dropped < DEADLINE + 2.5


def test_a_connection_that_sends_nothing_is_dropped_at_the_deadline(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=3 * DEADLINE + 2) as silent:
        started = time.monotonic()
        assert silent.recv(1) == b""  # closed by the server, not by our timeout (which would raise)
        assert time.monotonic() - started < DEADLINE + 2.5


def test_a_body_sent_a_byte_at_a_time_is_cut_at_the_deadline_too(port: int) -> None:
    head = (b"POST /support/search HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n\r\n")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(head)
        started, dropped = time.monotonic(), None
        while dropped is None and time.monotonic() - started < 3 * DEADLINE + 2:
            try:
                conn.sendall(b"a")
                conn.settimeout(0.2)
                if conn.recv(1) == b"":
                    dropped = time.monotonic() - started
            except TimeoutError:
                continue
            except (ConnectionResetError, BrokenPipeError):
                dropped = time.monotonic() - started
        assert dropped is not None and dropped < DEADLINE + 2.5, "uvicorn still held the connection"


def test_a_prompt_client_is_answered_and_may_keep_its_connection_for_another_request(port: int) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as answer:
        assert answer.status == 200
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        for _ in range(2):  # the second request on a kept connection gets its own deadline, and is in time
            time.sleep(DEADLINE * 0.6)
            conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = b""
            while not answer.endswith(b"\r\n\r\nok\n"):
                chunk = conn.recv(4096)
                assert chunk, "the connection was closed"
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 200")


def test_past_the_connection_cap_a_request_is_answered_503_at_once(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A flood of silent connections, each held until the deadline, used to take descriptors without bound."""
    monkeypatch.setattr(DeadlineH11Protocol, "deadline_seconds", 3.0)
    monkeypatch.setattr(web_server, "MAX_CONNECTIONS", 3, raising=False)
    serving = _serving(tmp_path)
    port = next(serving)
    flood = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(3)]
    try:
        time.sleep(0.3)  # accepted by now
        with socket.create_connection(("127.0.0.1", port), timeout=5) as late:
            started = time.monotonic()
            late.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = late.recv(4096)
        assert answer.startswith(b"HTTP/1.1 503") and time.monotonic() - started < 2
    finally:
        for conn in flood:
            conn.close()
        next(serving, None)
