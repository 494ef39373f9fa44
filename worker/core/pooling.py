"""A pooled connection pinged at checkout only after it sat idle: shared by the store's engine and the SQL connectors'.

The ping lets a worker ride out a database restart without a poisoned pool. ``pool_pre_ping`` did it at every
checkout: a round trip before each of a loop turn's three or four transactions, 8 % of the loop thread's time at the
shipped defaults, and one before each erasure and each batch of checks at a SQL system (py-spy). A connection back in
the pool moments ago was just answering; and should the database have gone since, its first statement fails as any
statement would (the loop takes that as an outage, a call as a retryable error), and SQLAlchemy invalidates the whole
pool on a disconnect error, so the next try connects afresh."""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa

PING_AFTER_IDLE_SECONDS = 1.0
_IDLE_SINCE = "oubli_idle_since"


def ping_after_idle(engine: sa.Engine) -> None:
    """Pings a connection at checkout if it sat in ``engine``'s pool for ``PING_AFTER_IDLE_SECONDS`` or more."""
    dbapi_error = engine.dialect.loaded_dbapi.Error

    @sa.event.listens_for(engine, "checkin")
    def _idle_from(_dbapi_connection: Any, record: Any) -> None:
        record.info[_IDLE_SINCE] = time.monotonic()

    @sa.event.listens_for(engine, "checkout")
    def _ping_if_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get(_IDLE_SINCE)  # none: a connection just made (``info`` goes with each one)
        if since is None or time.monotonic() - since < PING_AFTER_IDLE_SECONDS:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except dbapi_error as exc:
            if engine.dialect.is_disconnect(exc, dbapi_connection, None):
                # The pool's documented answer: it discards this connection and checks out another (three tries).
                raise sa.exc.DisconnectionError("the pooled connection was lost while idle") from exc
            raise
