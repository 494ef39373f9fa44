"""The store's pool pings a connection only after it sat idle (``db._ping_after_idle``), and still rides out a
connection the database dropped meanwhile: the next checkout gets a working one, with no error to the caller."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from worker.store import db

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def engine(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[sa.Engine, list[int]]]:
    monkeypatch.setattr(db, "PING_AFTER_IDLE_SECONDS", 0.2, raising=False)
    engine = db.create_engine(pg_url, pool_size=1)
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
