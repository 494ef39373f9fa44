"""A TCP forwarder that tests cut and heal, to play a database or broker restart without stopping it."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator


class Proxy:
    """A TCP forwarder to the database. ``cut()`` drops every connection and refuses new ones; ``freeze()`` keeps
    them open and forwards nothing."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._cut = threading.Event()
        self._flowing = threading.Event()  # cleared by freeze(): bytes are held, connections stay open
        self._flowing.set()
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if self._cut.is_set():
                client.close()
                continue
            upstream = socket.create_connection(self._target)
            with self._lock:
                self._sockets |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                self._flowing.wait()
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self._cut.set()
        with self._lock:
            for s in self._sockets:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
            self._sockets.clear()

    def freeze(self) -> None:
        """The far end stops answering but closes nothing, as a paused database or a dropped route: what is
        sent waits, unanswered, until ``heal``. A client sees no error, only silence."""
        self._flowing.clear()

    def heal(self) -> None:
        self._cut.clear()
        self._flowing.set()

    @contextlib.contextmanager
    def outage(self) -> Iterator[None]:
        """Cut for the duration of the block, then heal."""
        self.cut()
        try:
            yield
        finally:
            self.heal()

    def close(self) -> None:
        self.cut()
        self._server.close()
