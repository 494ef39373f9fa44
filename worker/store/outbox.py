"""The outbox's reading side and the relay's lease. Rows are written by ``Store`` in the same
transaction as the state change they announce; only the relay reads, rewrites and deletes them.

The relay's lease carries a ``token``, new each time a relay takes it. Renewing and deleting check the
token, not just the worker's name: a restarted worker (same name) takes its dead incarnation's lease
at once, and the old incarnation, should it still run, can then neither renew nor delete anything.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from worker.store.schema import leases, outbox
from worker.store.sets import among_bound

Headers = list[tuple[str, str | bytes | None]]
# What one relay batch may hold, in bytes of key, value and headers. Receipts are a few hundred bytes, but a dead
# letter may be a megabyte: 500 of them (a flood of hostile records just under the broker's limit) read at once,
# then copied to the producer, were a gigabyte in a worker given 512 MiB. A batch holds at least one row.
BATCH_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class OutboxRecord:
    id: int
    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers


@dataclass(frozen=True)
class Held:
    """A lease as one relay holds it: only the holder of ``token`` may renew it or delete rows."""
    name: str
    token: str


@functools.cache
def _batch_statement() -> sa.Select[Any]:
    """Built once: building it (a window over a subquery) on each read cost more of the loop's CPU than running it.
    One level, no join: a join of the sizes back to the rows made each read six times dearer for PostgreSQL."""
    size = (sa.func.coalesce(sa.func.length(outbox.c.key), 0) + sa.func.coalesce(sa.func.length(outbox.c.value), 0)
            + sa.func.coalesce(sa.func.length(outbox.c.headers_json), 0))
    first = (sa.select(outbox, (sa.func.sum(size).over(order_by=outbox.c.id) - size).label("before"))
             .order_by(outbox.c.id).limit(sa.bindparam("limit", type_=sa.Integer)).subquery())
    return (sa.select(*(first.c[column.name] for column in outbox.columns))
            .where(first.c.before < sa.bindparam("max_bytes", type_=sa.Integer)).order_by(first.c.id))


class Outbox:
    def __init__(self, engine: sa.Engine, *, actor: str) -> None:
        self.engine = engine
        self.actor = actor

    def batch(self, limit: int, max_bytes: int = BATCH_BYTES) -> list[OutboxRecord]:
        """The oldest rows, at most ``limit`` of them and as many as fit in ``max_bytes`` (at least one)."""
        # One statement outside a transaction: in one, the driver's BEGIN and the pool's ROLLBACK made it three
        # round trips, and the relay reads the outbox up to twice a loop turn. The sizes come from the first
        # ``limit`` ids alone (the primary key's order), and lengths are read from the rows' headers, not their data.
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            rows = conn.execute(_batch_statement(), {"limit": limit, "max_bytes": max_bytes}).all()
        return [OutboxRecord(r.id, r.topic, r.key, r.value,
                             [(str(k), str(v).encode("latin-1")) for k, v in json.loads(r.headers_json or "[]")])
                for r in rows]

    def delete(self, ids: Sequence[int], *, held: Held | None = None) -> bool:
        """Deletes published rows; with ``held``, only while that lease is still this token's.

        Returns False (nothing deleted) when the lease moved on. The lease row stays locked until the
        delete commits, so a relay taking the lease over reads the outbox either before or after it.
        """
        if not ids:
            return True
        if held is not None and self.engine.dialect.name == "postgresql":
            # One statement on its own (four round trips were a tenth of a busy loop turn's waits: bench/README.md).
            with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                return bool(conn.execute(_held_delete_statement(),
                                         {"ids": list(ids), "name": held.name, "token": held.token}).scalar())
        with self.engine.begin() as conn:
            if held is not None and not self._holds(conn, held):
                return False
            conn.execute(_delete_statement(conn.dialect.name), {"ids": list(ids)})
            return True

    def replace(self, record_id: int, *, key: bytes | None, value: bytes | None, headers: Headers) -> None:
        """Rewrites one unpublished row (a record the broker refused, by its stand-in)."""
        text = json.dumps([(k, (v.decode("latin-1") if isinstance(v, bytes) else v or "")) for k, v in headers])
        with self.engine.begin() as conn:
            conn.execute(outbox.update().where(outbox.c.id == record_id)
                         .values(key=key, value=value, headers_json=text))

    def acquire_lease(self, name: str, *, now: datetime, ttl: timedelta, token: str | None = None) -> bool:
        """Takes a named lease if it is free, expired or already this worker's (by name); sets ``token``."""
        with self.engine.begin() as conn:
            taken = conn.execute(leases.update().where(
                leases.c.name == name, sa.or_(leases.c.owner == self.actor, leases.c.expires_at < now),
            ).values(owner=self.actor, expires_at=now + ttl, token=token)).rowcount
            if taken:
                return True
            values = {"name": name, "owner": self.actor, "expires_at": now + ttl, "token": token}
            # ON CONFLICT: losing the race is the normal case for a follower, not an error to log.
            # rowcount is not reliable here (-1 with RETURNING-based inserts): ask for the row back.
            if conn.dialect.name == "postgresql":
                statement = pg_insert(leases).values(values).on_conflict_do_nothing().returning(leases.c.name)
            else:
                statement = sqlite_insert(leases).values(values).on_conflict_do_nothing().returning(leases.c.name)
            return conn.execute(statement).first() is not None

    def renew_lease(self, held: Held, *, now: datetime, ttl: timedelta) -> bool:
        """Extends a lease only while ``held.token`` still holds it. False: it was taken over."""
        with self.engine.begin() as conn:
            return bool(conn.execute(leases.update().where(leases.c.name == held.name, leases.c.token == held.token)
                                     .values(expires_at=now + ttl)).rowcount)

    def release_lease(self, name: str, *, token: str | None = None) -> None:
        with self.engine.begin() as conn:
            conn.execute(leases.delete().where(
                leases.c.name == name, leases.c.owner == self.actor,
                *([leases.c.token == token] if token is not None else []),
            ))

    @staticmethod
    def _holds(conn: sa.Connection, held: Held) -> bool:
        """Whether ``held`` is still the lease's, for a transaction that then deletes published rows."""
        return conn.execute(_holds_statement(conn.dialect.name),
                            {"name": held.name, "token": held.token}).first() is not None


@functools.cache
def _delete_statement(dialect: str) -> sa.Delete:
    return outbox.delete().where(among_bound(dialect, outbox.c.id, "ids"))


@functools.cache
def _held_delete_statement() -> sa.Select[Any]:
    """PostgreSQL: the check of ``_holds_statement`` and the delete in one statement, which answers whether the lease
    was held. The lease row's lock lasts until the statement's own transaction ends, as the two statements' did."""
    lease = _holds_statement("postgresql").cte("lease")
    gone = (outbox.delete().where(among_bound("postgresql", outbox.c.id, "ids"), sa.exists(sa.select(lease.c.name)))
            .returning(outbox.c.id).cte("gone"))
    # A data-modifying CTE runs whether or not the statement reads it.
    return sa.select(sa.func.count()).select_from(lease).add_cte(gone)


@functools.cache
def _holds_statement(dialect: str) -> sa.Select[Any]:
    columns: list[sa.ColumnElement[Any]] = [leases.c.name]
    if dialect == "postgresql":
        # That transaction need not wait for its WAL to reach the disk (one fsync fewer per loop turn): if a
        # crash of the database loses its commit, the rows are published again, which a crash of the worker
        # between the broker's commit and this one does anyway. In the same statement, not one more.
        columns.append(sa.func.set_config("synchronous_commit", "off", True))
    # FOR SHARE: a concurrent acquire_lease (an UPDATE of this row) waits until this transaction ends.
    return (sa.select(*columns).where(leases.c.name == sa.bindparam("name"), leases.c.token == sa.bindparam("token"))
            .with_for_update(read=True))
