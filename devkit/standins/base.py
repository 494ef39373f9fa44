"""A small real HTTP server that vendor stand-ins build on.

Each stand-in is a ``ThreadingHTTPServer`` on 127.0.0.1 with an ephemeral port, serving in a
daemon thread. A subclass registers routes (method + regex) and says how a request proves who it
is (``authorize``). The base adds what every vendor test needs:

* fault injection for the next N calls: any status and body (``fail_next``), a 429 with
  ``Retry-After`` in the vendor's own error shape (``rate_limit_next``), a hang longer than the
  client's timeout (``hang_next``), or every call while a block runs (``failing``);
* refused credentials while a block runs (``refusing_credentials``);
* an optional per-second cap, answered with the vendor's 429 (``max_per_second``);
* a log of every call with its time on the injected ``clock`` (``calls``), so that a test with a
  fake clock can check what the vendor saw per second.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qs, unquote, urlsplit


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased names
    body: bytes
    params: dict[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        try:
            return json.loads(self.body or b"null")
        except ValueError:
            return None

    def arg(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # dict/list → JSON, bytes → as is, None → empty
    headers: dict[str, str] = field(default_factory=dict)

    def encode(self) -> tuple[bytes, dict[str, str]]:
        headers = dict(self.headers)
        if self.body is None:
            return b"", headers
        if isinstance(self.body, bytes):
            return self.body, headers
        headers.setdefault("Content-Type", "application/json; charset=utf-8")
        return json.dumps(self.body).encode(), headers


@dataclass(frozen=True)
class Call:
    at: float
    method: str
    route: str
    status: int


_HANG = Reply(status=-1)


class StandIn:
    """Subclasses set ``name`` and call ``route`` in ``__init__``."""

    name = "standin"

    def __init__(self, *, clock: Callable[[], float] = time.time, hang_seconds: float = 2.0) -> None:
        self.clock = clock
        self.hang_seconds = hang_seconds
        self.max_per_second: float | None = None
        self.fault_exempt: set[str] = set()  # routes that injected faults skip (say, an auth server)
        self.calls: list[Call] = []
        self._lock = threading.RLock()
        self._routes: list[tuple[str, re.Pattern[str], str, Callable[..., Reply]]] = []
        self._faults: list[Reply] = []
        self._sticky: Reply | None = None
        self._refuse = False
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- for subclasses -------------------------------------------------------------------------

    def route(self, method: str, pattern: str, handler: Callable[..., Reply],
              name: str | None = None) -> None:
        self._routes.append((method, re.compile(f"^{pattern}$"), name or pattern, handler))

    def authorize(self, request: Request) -> Reply | None:
        """``None`` when the request carries valid credentials, else the vendor's refusal."""
        return None

    def refused(self) -> bool:
        return self._refuse

    def rate_limited_reply(self, retry_after: str) -> Reply:
        return Reply(429, {"error": "rate limited"}, {"Retry-After": retry_after})

    def not_found_reply(self) -> Reply:
        return Reply(404, {"error": "not found"})

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> str:
        handler = type(f"{type(self).__name__}Handler", (_Handler,), {"standin": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        name=f"standin-{self.name}", daemon=True)
        self._thread.start()
        return self.url

    @property
    def url(self) -> str:
        assert self._server is not None, "stand-in not started"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @classmethod
    def fixture(cls) -> Any:
        """A pytest fixture serving each test a fresh stand-in, stopped afterwards.

        ``fb = FacebookStandIn.fixture()`` in a test module: the fixture takes the name it is given.
        """
        import pytest  # here, not at the top: the demo imports the stand-ins and needs no pytest

        def serve() -> Iterator[Self]:
            with cls() as standin:
                yield standin

        return pytest.fixture(serve)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- faults ---------------------------------------------------------------------------------

    def fail_next(self, count: int = 1, *, status: int = 500, body: Any = None,
                  headers: dict[str, str] | None = None) -> None:
        with self._lock:
            self._faults.extend(Reply(status, body if body is not None else {"error": "injected"},
                                      dict(headers or {})) for _ in range(count))

    def rate_limit_next(self, count: int = 1, retry_after: str = "7") -> None:
        with self._lock:
            self._faults.extend(self.rate_limited_reply(retry_after) for _ in range(count))

    def hang_next(self, count: int = 1) -> None:
        with self._lock:
            self._faults.extend(_HANG for _ in range(count))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self._sticky = None

    @contextlib.contextmanager
    def failing(self, status: int = 503) -> Iterator[None]:
        with self._lock:
            self._sticky = Reply(status, {"error": "unavailable"}, {"Retry-After": "1"})
        try:
            yield
        finally:
            with self._lock:
                self._sticky = None

    @contextlib.contextmanager
    def refusing_credentials(self) -> Iterator[None]:
        self._refuse = True
        try:
            yield
        finally:
            self._refuse = False

    def count(self, route: str | None = None) -> int:
        with self._lock:
            return sum(1 for call in self.calls if route is None or call.route == route)

    def peak_per_window(self, window: float = 1.0, route: str | None = None, status: int = 200) -> int:
        """The most calls (that got ``status``) inside any ``window`` seconds of the clock."""
        with self._lock:
            stamps = sorted(c.at for c in self.calls
                            if (route is None or c.route == route) and c.status == status)
        peak, first = 0, 0
        for last, stamp in enumerate(stamps):
            while stamp - stamps[first] >= window:
                first += 1
            peak = max(peak, last - first + 1)
        return peak

    # -- dispatch -------------------------------------------------------------------------------

    def handle(self, request: Request) -> Reply:
        route_name, reply = "?", None
        for method, pattern, name, handler in self._routes:
            match = pattern.match(request.path)
            if match and method == request.method:
                route_name = name
                request.params = {k: unquote(v) for k, v in match.groupdict().items()}
                reply = self._answer(request, name, handler)
                break
        if reply is None:
            reply = self.not_found_reply()
        with self._lock:
            self.calls.append(Call(self.clock(), request.method, route_name, reply.status))
        return reply

    def _answer(self, request: Request, name: str, handler: Callable[..., Reply]) -> Reply:
        with self._lock:
            fault = None
            if name not in self.fault_exempt:
                fault = self._faults.pop(0) if self._faults else self._sticky
            if fault is None and self.max_per_second is not None and name not in self.fault_exempt:
                now = self.clock()
                recent = sum(1 for c in self.calls if c.route == name and c.status < 400 and now - c.at < 1.0)
                if recent >= self.max_per_second:
                    fault = self.rate_limited_reply("1")
        if fault is not None:
            if fault is _HANG:
                self._stopping.wait(self.hang_seconds)
            return fault
        refusal = self.authorize(request)
        if refusal is not None:
            return refusal
        return handler(request)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # keep-alive answers go out at once, not after a delayed ACK
    standin: StandIn

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        pass  # request lines hold personal data (emails in paths)

    def _dispatch(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        request = Request(self.command, parts.path, parse_qs(parts.query, keep_blank_values=True),
                          {k.lower(): v for k, v in self.headers.items()}, body)
        reply = self.standin.handle(request)
        if reply is _HANG:
            self.close_connection = True  # drop the connection without an answer
            return
        payload, headers = reply.encode()
        self.send_response(reply.status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _dispatch
