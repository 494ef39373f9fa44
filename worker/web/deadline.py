"""uvicorn's HTTP/1.1 protocol (h11) with a deadline on receiving each request, headers and body.

uvicorn bounds a request's size (``h11_max_incomplete_event_size``, 16 KiB of headers) and the idle time
between requests (``timeout_keep_alive``), but not the time a request takes to arrive: its keep-alive timer
starts only after a response and is cancelled by any byte received, and nothing is armed before the first
request. So a client that sends its headers a byte every second (slowloris), or connects and says nothing,
held its connection and file descriptor for good, and a few thousand of them left ``oubli web`` unable to
accept Meta's callbacks or open its store connections. ``limit_concurrency`` would only turn the next honest
callers away with 503 while the slow ones stay.

The deadline runs from the connection's start and again from each response's end (the next request on a kept
connection); a request fully received in time disarms it, so a slow answer (a store query) is never cut.
"""

from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

REQUEST_DEADLINE_SECONDS = 10.0
# The client's side while a request is still on its way: before its head is complete, and during its body.
_RECEIVING = frozenset({h11.IDLE, h11.SEND_BODY})


class DeadlineH11Protocol(H11Protocol):
    deadline_seconds = REQUEST_DEADLINE_SECONDS
    request_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state not in _RECEIVING:  # the request is in (or the connection is over)
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():  # a kept connection: its next request gets a deadline of its own
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self.request_timer = self.loop.call_later(self.deadline_seconds, self._request_too_slow)

    def _disarm(self) -> None:
        if self.request_timer is not None:
            self.request_timer.cancel()
            self.request_timer = None

    def _request_too_slow(self) -> None:
        self.request_timer = None
        if self.conn.their_state in _RECEIVING and not self.transport.is_closing():
            self.transport.close()  # no answer: a client this slow is not reading one either
