"""The outbox's reading side and the relay's lease. Rows are written by ``Store`` in the same
transaction as the state change they announce; only the relay reads and deletes them."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from worker.store.schema import leases, outbox


@dataclass(frozen=True)
class OutboxRecord:
    id: int
    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, str | bytes | None]]


class Outbox:
    def __init__(self, engine: sa.Engine, *, actor: str) -> None:
        self.engine = engine
        self.actor = actor

    def batch(self, limit: int) -> list[OutboxRecord]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(outbox).order_by(outbox.c.id).limit(limit)).all()
        return [OutboxRecord(r.id, r.topic, r.key, r.value,
                             [(str(k), str(v).encode("latin-1")) for k, v in json.loads(r.headers_json or "[]")])
                for r in rows]

    def delete(self, ids: Sequence[int]) -> None:
        if ids:
            with self.engine.begin() as conn:
                conn.execute(outbox.delete().where(outbox.c.id.in_(ids)))

    def acquire_lease(self, name: str, *, now: datetime, ttl: timedelta) -> bool:
        """A named lease held by one worker at a time (the outbox relay), renewed by its holder."""
        with self.engine.begin() as conn:
            taken = conn.execute(leases.update().where(
                leases.c.name == name, sa.or_(leases.c.owner == self.actor, leases.c.expires_at < now),
            ).values(owner=self.actor, expires_at=now + ttl)).rowcount
            if taken:
                return True
            values = {"name": name, "owner": self.actor, "expires_at": now + ttl}
            # ON CONFLICT: losing the race is the normal case for a follower, not an error to log.
            # rowcount is not reliable here (-1 with RETURNING-based inserts): ask for the row back.
            if conn.dialect.name == "postgresql":
                statement = pg_insert(leases).values(values).on_conflict_do_nothing().returning(leases.c.name)
            else:
                statement = sqlite_insert(leases).values(values).on_conflict_do_nothing().returning(leases.c.name)
            return conn.execute(statement).first() is not None

    def release_lease(self, name: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(leases.delete().where(leases.c.name == name, leases.c.owner == self.actor))
