"""The shared vendor client against a hostile server: trickled bytes, decompression bombs, oversized
replies. Each call must end within its ``timeout_seconds`` and never hold more than its size cap."""

from __future__ import annotations

import gzip
import socket
import threading
import time
import tracemalloc
import zlib
from collections.abc import Callable, Iterator

import pytest

from connectors.http import HttpSettings, VendorHttp
from connectors.vendor import Options
from worker.core.errors import RetryableError

pytestmark = pytest.mark.timeout(30)

Script = Callable[[socket.socket], None]


class HostileServer:
    """Answers every connection with ``script`` after reading the request head."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.stop = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                data = conn.recv(4096)
                if not data:
                    return
                head += data
            try:
                self.script(conn)
            except OSError:
                pass  # the client gave up: that is what the tests want

    def trickle(self, conn: socket.socket, data: bytes, every: float) -> None:
        for byte in data:
            if self.stop.wait(every):
                return
            conn.sendall(bytes([byte]))

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.sock.close()


@pytest.fixture
def serve() -> Iterator[Callable[[Script], HostileServer]]:
    servers: list[HostileServer] = []

    def start(script: Script) -> HostileServer:
        servers.append(HostileServer(script))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def client(url: str, **settings: object) -> VendorHttp:
    opts = Options("shopimind", {"base_url": url, "allow_insecure_http": True, **settings})
    return VendorHttp("shopimind", HttpSettings.parse(opts, "https://x"))


def head(body_length: int | None = None, *extra: str) -> bytes:
    lines = ["HTTP/1.1 200 OK", "Content-Type: application/json", *extra]
    if body_length is not None:
        lines.append(f"Content-Length: {body_length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_a_body_trickled_byte_by_byte_ends_at_the_total_deadline(serve: Callable[[Script], HostileServer]) -> None:
    body = b'{"statusCode": 200, "sent_count": 1, "rejected_count": 0}'
    server = serve(lambda conn: (conn.sendall(head(len(body))), server.trickle(conn, body, 0.2)))
    http = client(server.url, timeout_seconds=0.6)
    started = time.monotonic()
    with pytest.raises(RetryableError) as caught:
        http.send("DELETE", "/v1/customers/dupont", op="customer delete")
    elapsed = time.monotonic() - started
    # Each byte comes well within the per-read timeout; only a deadline on the whole call stops it.
    assert caught.value.code == "timeout" and elapsed < 1.2
    assert "dupont" not in str(caught.value)
    http.close()


def test_headers_trickled_byte_by_byte_end_at_the_total_deadline(serve: Callable[[Script], HostileServer]) -> None:
    server = serve(lambda conn: server.trickle(conn, head(2) + b"{}", 0.2))
    http = client(server.url, timeout_seconds=0.6)
    started = time.monotonic()
    with pytest.raises(RetryableError) as caught:
        http.send("GET", "/v1/customers/dupont", op="customer get")
    assert caught.value.code == "timeout" and time.monotonic() - started < 1.2
    http.close()


def test_a_prompt_reply_still_arrives_whole(serve: Callable[[Script], HostileServer]) -> None:
    body = b'{"statusCode": 200, "data": {"lang": "fr"}}'
    server = serve(lambda conn: conn.sendall(head(len(body)) + body))
    http = client(server.url, timeout_seconds=2)
    response = http.send("GET", "/v1/customers/x", op="customer get")
    assert response.status_code == 200 and response.json() == {"statusCode": 200, "data": {"lang": "fr"}}
    http.close()


def _bomb(encoding: str, size: int) -> bytes:
    if encoding == "gzip":
        return gzip.compress(b"\0" * size, compresslevel=9)
    return zlib.compress(b"\0" * size, 9)


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_decompression_bomb_stops_at_the_size_cap(serve: Callable[[Script], HostileServer],
                                                     encoding: str) -> None:
    bomb = _bomb(encoding, 32 * 1024 * 1024)  # 32 MiB of zeros in about 32 KB
    server = serve(lambda conn: conn.sendall(head(len(bomb), f"Content-Encoding: {encoding}") + bomb))
    http = client(server.url, timeout_seconds=5, max_response_bytes=64 * 1024)
    tracemalloc.start()
    try:
        with pytest.raises(RetryableError) as caught:
            http.send("GET", "/v1/customers/x", op="customer get")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert caught.value.code == "vendor_reply_too_large"
    assert "65536" in str(caught.value) or "64 KiB" in str(caught.value)
    assert peak < 2 * 1024 * 1024, f"held {peak} bytes for a 64 KiB cap"
    http.close()


def test_a_plain_oversized_reply_stops_at_the_size_cap(serve: Callable[[Script], HostileServer]) -> None:
    chunk = b"x" * 65536
    server = serve(lambda conn: (conn.sendall(head(None, "Transfer-Encoding: chunked")),
                                 [conn.sendall(b"10000\r\n" + chunk + b"\r\n") for _ in range(256)]))
    http = client(server.url, timeout_seconds=5, max_response_bytes=100_000)
    with pytest.raises(RetryableError) as caught:
        http.send("GET", "/v1/customers/x", op="customer get")
    assert caught.value.code == "vendor_reply_too_large"
    http.close()


def test_a_compressed_reply_under_the_cap_is_decoded(serve: Callable[[Script], HostileServer]) -> None:
    body = gzip.compress(b'{"statusCode": 200, "data": {"lang": "fr"}}')
    server = serve(lambda conn: conn.sendall(head(len(body), "Content-Encoding: gzip") + body))
    http = client(server.url, timeout_seconds=2, max_response_bytes=1024)
    response = http.send("GET", "/v1/customers/x", op="customer get")
    assert response.json() == {"statusCode": 200, "data": {"lang": "fr"}}
    http.close()


def test_the_size_cap_is_a_setting_with_a_sane_default() -> None:
    assert HttpSettings.parse(Options("s", {}), "https://x").max_response_bytes == 4 * 1024 * 1024
    assert HttpSettings.parse(Options("s", {"max_response_bytes": "2048"}), "https://x").max_response_bytes == 2048
