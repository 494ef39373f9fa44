"""The store's pool, and a SQL connector's, ping a connection only after it sat idle (``worker.core.pooling``), and
still ride out a connection the database dropped meanwhile: the next checkout gets a working one, with no error to the
caller."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from connectors.sql import make_engine
from connectors.sql_config import parse
from worker.core import pooling
from worker.store import db

pytestmark = pytest.mark.timeout(60)


def _connector_engine(url: str) -> sa.Engine:
    rule = {"table": "customers", "match": {"email": "email"}, "erase": "delete"}
    return make_engine(parse("shop", {"url": url, "pool_size": 1, "tables": [rule]}))


@pytest.fixture(params=["store", "sql connector"])
def engine(request: pytest.FixtureRequest, pg_url: str,
           monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[sa.Engine, list[int]]]:
    monkeypatch.setattr(pooling, "PING_AFTER_IDLE_SECONDS", 0.2)
    engine = db.create_engine(pg_url, pool_size=1) if request.param == "store" else _connector_engine(pg_url)
    pings: list[int] = []
    ping = engine.dialect.do_ping

    def counted(dbapi_connection: Any) -> bool:
        pings.append(1)
        return ping(dbapi_connection)

    monkeypatch.setattr(engine.dialect, "do_ping", counted)
    yield engine, pings
    engine.dispose()


def _backend(engine: sa.Engine) -> int:
    with engine.begin() as conn:
        return int(conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one())


def test_a_busy_pool_does_not_ping_and_an_idle_connection_is_pinged_once(engine: tuple[sa.Engine, list[int]]) -> None:
    store, pings = engine
    first = _backend(store)
    for _ in range(20):  # a loop's turns: checked out again within moments
        assert _backend(store) == first
    assert pings == []
    time.sleep(0.3)
    assert _backend(store) == first
    assert len(pings) == 1


def test_a_connection_the_database_dropped_while_idle_is_replaced_without_an_error(
        engine: tuple[sa.Engine, list[int]], pg_url: str) -> None:
    store, pings = engine
    lost = _backend(store)
    admin = sa.create_engine(pg_url, poolclass=sa.pool.NullPool)
    with admin.begin() as conn:
        assert conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": lost}).scalar_one()
    admin.dispose()
    time.sleep(0.3)
    assert _backend(store) != lost  # the ping found it gone, and the pool connected afresh
    assert pings


@pytest.mark.parametrize("max_in_flight", [64, 1000])
def test_every_internal_step_at_once_reuses_pooled_connections(pg_url: str, max_in_flight: int) -> None:
    """Each ``_verify`` (``_identity``, ``_package``) step uses the store from its own thread. With fewer pooled
    connections than steps at once, SQLAlchemy opened overflow connections and closed them at check-in: a
    1,000-erasure burst of one SQL system opened 544 PostgreSQL sessions, and ran at 68-94 requests/s where the
    same burst without verification ran at 269."""
    from devkit.pipeline import raw_settings
    from worker import compose, config
    from worker.executor import VERIFY_BATCH, internal_limit
    from worker.receipts import VERIFY_TASK

    raw = raw_settings(store_url=pg_url, bootstrap="127.0.0.1:1", systems={})
    raw["worker"]["max_in_flight"] = max_in_flight
    parts = compose.build(config.build(raw, env={}), migrate=True, producer_factory=lambda _config: None)  # type: ignore[arg-type,return-value]
    try:
        steps = parts.executor.verify_jobs_limit  # each _verify job (a batch of requests) holds one connection
        assert steps == internal_limit(max_in_flight) <= 8  # bounded, whatever max_in_flight is
        assert parts.executor.limits[VERIFY_TASK] == steps * VERIFY_BATCH
        backends: set[int] = set()
        opened: list[int] = []
        sa.event.listen(parts.engine, "connect", lambda *_: opened.append(1))
        barrier = threading.Barrier(steps + 1)  # every step and the loop thread hold a connection at once

        def step() -> None:
            with parts.engine.connect() as conn:
                backends.add(int(conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()))
                barrier.wait(timeout=30)

        for _ in range(3):  # three waves of steps: the first opens the connections, the next two reuse them
            threads = [threading.Thread(target=step) for _ in range(steps + 1)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
        assert len(backends) == steps + 1  # the same sessions in every wave
        assert len(opened) <= steps + 1
    finally:
        parts.engine.dispose()
