"""Bulk updates against the real PostgreSQL, both ways (``StoreBase._update_many``): bound arrays for a few
rows, COPY into a temporary staging table for many. Each writes exactly the rows whose version guard and
lease owner match, and the staging table starts every transaction empty. A session creates each staging table
once, and again after a rollback took it away. A role that may not create
temporary tables keeps every bulk update on arrays."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from psycopg.adapt import PyFormat
from psycopg.types.array import ListBinaryDumper

from devkit import services
from devkit.pipeline import record
from worker import states
from worker.config import Topics
from worker.core.timefmt import utcnow
from worker.store import db
from worker.store import staging as staging_tables
from worker.store.base import STAGED_UPDATE_ROWS, StoreBase, _may_stage, _pg_copy_type
from worker.store.claims import CLAIM_COLUMNS
from worker.store.repository import Store
from worker.store.schema import audit_events, metadata, outbox, tasks
from worker.store.sets import among


@pytest.mark.parametrize("count", [STAGED_UPDATE_ROWS // 4, STAGED_UPDATE_ROWS * 2], ids=["arrays", "staged"])
def test_a_bulk_update_writes_exactly_the_guarded_rows(pg_url: str, count: int) -> None:
    engine = db.create_engine(pg_url)
    db.migrate(engine)
    store = Store(engine, topics=Topics(), policy=states.RetryPolicy(), actor="bulk-test")
    now = utcnow()
    for i in range(count // 2):
        record(store, {"alpha": 3, "beta": 3}, now=now, customer_id=f"C-bulk-{count}-{i}")
    with engine.connect() as conn:
        current = [dict(r) for r in conn.execute(sa.select(tasks.c.request_id, tasks.c.system, tasks.c.version)
                                                 .order_by(tasks.c.request_id, tasks.c.system)).mappings()]
    assert len(current) == count

    def claim_rows(chosen: list[dict[str, Any]], *, stale: bool = False) -> list[dict[str, Any]]:
        return [{"request_id": r["request_id"], "system": r["system"], "_version": r["version"] - stale,
                 "state": states.SystemState.RUNNING, "attempts": 1, "next_attempt_at": None, "lease_losses": 0,
                 "lease_owner": "bulk-test", "lease_expires_at": now + timedelta(seconds=30),
                 "version": r["version"] + 1} for r in chosen]

    first, second = current[0::2], current[1::2]
    with engine.connect() as conn:
        with conn.begin():
            # Half of them carry a version that has moved on: the guard keeps them out.
            written = StoreBase._update_many(conn, tasks, ("request_id", "system"), CLAIM_COLUMNS,
                                             [*claim_rows(first), *claim_rows(second, stale=True)], guard="version")
        assert written == len(first)
        with conn.begin():
            # The staging table (if this size used one) starts empty: the first transaction's rows are gone.
            if count >= STAGED_UPDATE_ROWS:
                staging = staging_tables.table(conn, tasks, ["request_id", "system", *CLAIM_COLUMNS, "_version"],
                                         ["request_id", "system", *CLAIM_COLUMNS, "version"])
                assert conn.execute(sa.text(f'SELECT count(*) FROM "{staging}"')).scalar_one() == 0
            renewed = [{"request_id": r["request_id"], "system": r["system"], "_version": r["version"] + 1,
                        "lease_expires_at": now + timedelta(minutes=5)} for r in first]
            assert StoreBase._update_many(conn, tasks, ("request_id", "system"), ("lease_expires_at",), renewed,
                                          guard="version", owner="someone-else") == 0
            assert StoreBase._update_many(conn, tasks, ("request_id", "system"), ("lease_expires_at",), renewed,
                                          guard="version", owner="bulk-test") == len(first)
        after = {(r.request_id, r.system): r for r in conn.execute(sa.select(tasks))}
    for row in first:
        task = after[(row["request_id"], row["system"])]
        assert (task.state, task.version, task.lease_owner) == ("running", row["version"] + 1, "bulk-test")
        assert task.lease_expires_at == now + timedelta(minutes=5)
    for row in second:
        task = after[(row["request_id"], row["system"])]
        assert (task.state, task.version, task.lease_owner) == ("pending", row["version"], None)


@pytest.fixture
def without_temporary() -> Iterator[sa.Engine]:
    """An engine on a fresh database where PUBLIC may not create temporary tables, whose every connection
    acts as a role without that privilege (``SET ROLE``), as a locked-down production database would."""
    base = sa.make_url(services.require_postgres())
    name = f"notemp_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(base, poolclass=sa.pool.NullPool, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        conn.execute(sa.text(f'REVOKE TEMPORARY ON DATABASE "{name}" FROM PUBLIC'))
        conn.execute(sa.text(f'CREATE ROLE "{name}" NOLOGIN'))
    engine = db.create_engine(base.set(database=name).render_as_string(hide_password=False))
    try:
        db.migrate(engine)
        with engine.begin() as conn:
            conn.execute(sa.text(f'GRANT USAGE ON SCHEMA public TO "{name}"'))
            conn.execute(sa.text(f'GRANT ALL ON ALL TABLES IN SCHEMA public TO "{name}"'))
            conn.execute(sa.text(f'GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO "{name}"'))
        engine.dispose()

        @sa.event.listens_for(engine, "connect")
        def _as_the_role(dbapi_connection: Any, _record: Any) -> None:
            with dbapi_connection.cursor() as cursor:
                cursor.execute(f'SET ROLE "{name}"')
            dbapi_connection.commit()

        yield engine
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
            conn.execute(sa.text(f'DROP ROLE "{name}"'))
        admin.dispose()


def test_a_role_that_may_not_create_temporary_tables_updates_many_rows_as_arrays(
        without_temporary: sa.Engine) -> None:
    store = Store(without_temporary, topics=Topics(), policy=states.RetryPolicy(), actor="bulk-test")
    now = utcnow()
    for i in range(STAGED_UPDATE_ROWS):
        record(store, {"alpha": 3, "beta": 3}, now=now, customer_id=f"C-notemp-{i}")
    with without_temporary.begin() as conn:
        assert not _may_stage(conn)
        rows = [{"request_id": r.request_id, "system": r.system, "_version": r.version,
                 "lease_expires_at": now + timedelta(minutes=1)}
                for r in conn.execute(sa.select(tasks.c.request_id, tasks.c.system, tasks.c.version))]
        assert len(rows) == 2 * STAGED_UPDATE_ROWS
        assert StoreBase._update_many(conn, tasks, ("request_id", "system"), ("lease_expires_at",), rows,
                                      guard="version") == len(rows)


def test_arrays_go_in_binary_and_keep_every_value_exactly(pg_url: str) -> None:
    """The store's connections bind a list in binary (``db.create_engine``); values that a text array must
    quote or escape (quotes, braces, commas, backslashes, spaces, the word NULL, the empty string) and real
    NULLs arrive unchanged, in order, through ``among`` and a bulk insert."""
    engine = db.create_engine(pg_url)
    db.migrate(engine)
    odd = ['a"b', "{c}", "d,e", "f\\g", " h ", "NULL", "", "ü\u3000", f"req-{uuid.uuid4()}"]
    with engine.begin() as conn:
        raw: Any = conn.connection.driver_connection
        assert raw.adapters.get_dumper(list, PyFormat.AUTO) is ListBinaryDumper
        echoed = conn.execute(sa.text("SELECT unnest(CAST(:values AS text[]))"),
                              {"values": [*odd, None]}).scalars().all()
        assert echoed == [*odd, None]
        found = conn.execute(sa.select(sa.literal_column("v")).select_from(
            sa.text("unnest(CAST(:values AS text[])) AS v")).where(among(conn, sa.literal_column("v"), odd[:4])),
            {"values": odd}).scalars().all()
        assert found == odd[:4]
        rows = [{"request_id": f"bulk-binary-{i}", "system": None, "at": utcnow(), "actor": value,
                 "action": "probe", "detail": None if i % 2 else value} for i, value in enumerate(odd)]
        StoreBase._insert_many(conn, audit_events, rows, returning=("id",))
        stored = conn.execute(sa.select(audit_events.c.actor, audit_events.c.detail)
                              .where(audit_events.c.action == "probe").order_by(audit_events.c.id)).all()
    engine.dispose()
    assert [tuple(r) for r in stored] == [(v, None if i % 2 else v) for i, v in enumerate(odd)]


def test_a_session_creates_its_staging_table_once_and_again_after_a_rollback(pg_url: str) -> None:
    engine = db.create_engine(pg_url, pool_size=1)
    db.migrate(engine)
    store = Store(engine, topics=Topics(), policy=states.RetryPolicy(), actor="staging-test")
    now = utcnow()
    for i in range(STAGED_UPDATE_ROWS):
        record(store, {"alpha": 3}, now=now, customer_id=f"C-staging-{uuid.uuid4().hex[:8]}-{i}")
    creates: list[str] = []

    @sa.event.listens_for(engine, "before_cursor_execute")
    def _seen(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.startswith("CREATE TEMPORARY TABLE"):
            creates.append(statement)

    def renew(conn: sa.Connection, *, fail: bool = False) -> int:
        rows = [dict(r) for r in conn.execute(sa.select(tasks.c.request_id, tasks.c.system, tasks.c.version)
                                              .where(tasks.c.system == "alpha")).mappings()]
        assert len(rows) >= STAGED_UPDATE_ROWS
        written = StoreBase._update_many(conn, tasks, ("request_id", "system"), ("lease_expires_at",),
                                         [{**r, "_version": r["version"], "lease_expires_at": now} for r in rows],
                                         guard="version")
        if fail:
            raise RuntimeError("the step failed after its bulk update")
        return written

    with engine.connect() as conn:
        with conn.begin():
            assert renew(conn) >= STAGED_UPDATE_ROWS
        with conn.begin():
            assert renew(conn) >= STAGED_UPDATE_ROWS
        assert len(creates) == 1  # the second transaction used the table the first one committed

        # A transaction that creates the table and rolls back takes the table with it: the next one creates it.
        conn.execute(sa.text("DISCARD TEMP"))
        conn.commit()
        staging_tables.forget(conn)
        with pytest.raises(RuntimeError), conn.begin():
            renew(conn, fail=True)
        assert len(creates) == 2
        with conn.begin():
            assert renew(conn) >= STAGED_UPDATE_ROWS
        assert len(creates) == 3

        # Dropped behind the session's back: one failed try, then the table is created again.
        conn.execute(sa.text("DISCARD TEMP"))
        conn.commit()
        with pytest.raises(sa.exc.ProgrammingError), conn.begin():
            renew(conn)
        with conn.begin():
            assert renew(conn) >= STAGED_UPDATE_ROWS
        assert len(creates) == 4
    engine.dispose()


def test_binary_copy_sends_each_column_as_the_type_the_migrated_store_has(pg_url: str) -> None:
    """A binary COPY carries no type names: a value sent at another width than its column's (an int8 into an
    int4) is refused as "incorrect binary data format". So each column's COPY type must be the type the
    migrations made, not only the one the metadata declares; and rows sent that way arrive unchanged."""
    engine = db.create_engine(pg_url)
    db.migrate(engine)
    stored_types = "SELECT a.atttypid::regtype::text FROM pg_attribute a WHERE a.attrelid = CAST(:t AS regclass) " \
                   "AND a.attname = :c AND NOT a.attisdropped"
    with engine.begin() as conn:
        for table in metadata.sorted_tables:
            for column in table.columns:
                stored = conn.execute(sa.text(stored_types), {"t": table.name, "c": column.name}).scalar_one()
                sent = conn.execute(sa.text("SELECT CAST(:n AS regtype)::text"),
                                    {"n": _pg_copy_type(column.type)}).scalar_one()
                assert stored == sent or (sent, stored) == ("text", "character varying"), (table.name, column.name)
        now = utcnow()
        key = f"bulk-copy-{uuid.uuid4()}"
        rows = [{"topic": key, "key": b"\x00\xffk", "value": None, "headers_json": '[["x", "y"]]', "created_at": now},
                {"topic": key, "key": None, "value": b"", "headers_json": None, "created_at": now}]
        StoreBase._insert_many(conn, outbox, rows)  # no returning: COPY
        copied = conn.execute(sa.select(outbox.c.key, outbox.c.value, outbox.c.headers_json, outbox.c.created_at)
                              .where(outbox.c.topic == key).order_by(outbox.c.id)).all()
        conn.execute(sa.delete(outbox).where(outbox.c.topic == key))
    engine.dispose()
    assert [tuple(r) for r in copied] == [(b"\x00\xffk", None, '[["x", "y"]]', now), (None, b"", None, now)]
