"""/healthz, /readyz and /metrics on one small HTTP server thread."""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from worker.metrics import REGISTRY

# How long a connection may send nothing before the server drops it. A probe or a scrape takes milliseconds; a
# client that connects and stays silent would otherwise hold a thread of the worker's process for good, and
# enough of them leave it unable to start the threads its work needs.
IDLE_TIMEOUT_SECONDS = 10.0
# How long a client has to send its whole request, however it paces it. The idle timeout alone is measured per
# read, so a client that sends its headers a byte every second (slowloris) never met it and held a thread for
# good; this one is measured from the connection's start. One request per connection (HTTP/1.0).
REQUEST_DEADLINE_SECONDS = 10.0
# How many connections are served at once, a thread each. Probes and scrapes need a few; a flood of connections
# (each held up to the deadline above) would otherwise start a thread apiece in the worker's process, until it
# could not start the ones its calls need. Past this many, a new connection is closed at once.
MAX_CONNECTIONS = 32


class _DeadlineReader(socket.SocketIO):
    """A connection's reads, each allowed only what is left of one deadline (and at most the idle timeout).

    Past it a read raises ``TimeoutError``, which ``BaseHTTPRequestHandler`` answers by closing the connection."""

    def __init__(self, sock: socket.socket, deadline: float, idle: float) -> None:
        super().__init__(sock, "rb")
        self.sock, self.deadline, self.idle = sock, deadline, idle

    def readinto(self, buffer: memoryview) -> int | None:  # type: ignore[override]
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request was not received within its deadline")
        self.sock.settimeout(min(left, self.idle))
        return super().readinto(buffer)


class _BoundedServer(ThreadingHTTPServer):
    """``ThreadingHTTPServer`` with at most ``limit`` connections served at once; the rest are closed unanswered."""

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], limit: int) -> None:
        super().__init__(address, handler)
        self.slots = threading.BoundedSemaphore(limit)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()  # no thread started to give it back
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


class HealthServer:
    """``live`` says the loop is turning; ``ready`` says it has its partitions and its store."""

    def __init__(self, host: str, port: int, *, live: Callable[[], bool], ready: Callable[[], bool]) -> None:
        probes = {"/healthz": live, "/readyz": ready}

        idle, deadline = IDLE_TIMEOUT_SECONDS, REQUEST_DEADLINE_SECONDS

        class Handler(BaseHTTPRequestHandler):
            timeout = idle  # StreamRequestHandler sets it on the socket: a silent client is let go

            def setup(self) -> None:
                super().setup()
                self.rfile.close()  # the plain reader, replaced by one that keeps to the request's deadline
                self.rfile = io.BufferedReader(_DeadlineReader(self.connection, time.monotonic() + deadline, idle))

            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                self._answer(body=True)

            def do_HEAD(self) -> None:  # noqa: N802 - some load balancers' health checks send HEAD
                self._answer(body=False)

            def _answer(self, *, body: bool) -> None:
                # By path alone: a load balancer or a scraper may add a query string (a cache buster, a scrape's
                # own parameters), and an exact match answered those 404, which reads as "down".
                path = urlsplit(self.path).path
                if path == "/metrics":
                    self._send(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST, body)
                elif path in probes:
                    ok = probes[path]()
                    self._send(200 if ok else 503, b"ok\n" if ok else b"not ready\n", "text/plain", body)
                else:
                    self._send(404, b"not found\n", "text/plain", body)

            def _send(self, status: int, content: bytes, content_type: str, body: bool) -> None:
                self.connection.settimeout(idle)  # the answer's writes get their own time, not what the read left
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                if body:
                    self.wfile.write(content)

            def log_message(self, *_args: object) -> None:  # probes every few seconds would drown the logs
                return

        self.server = _BoundedServer((host, port), Handler, MAX_CONNECTIONS)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name="oubli-http", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
