"""Temporary tables for bulk updates (``StoreBase._update_many``), created once per database session.

A staging table is the session's own (no other connection sees it), and ``ON COMMIT DELETE ROWS`` empties it
at each commit, so every transaction finds it empty. Its ``CREATE ... IF NOT EXISTS`` was a round trip in
every claim and every harvest, two of a loop turn's twenty statements. Now the session remembers the tables
it has: a table created in a transaction counts once that transaction commits, and is forgotten if it rolls
back (the table went with it). Should the memory ever be wrong, the ``COPY`` into a missing table fails, the
transaction rolls back like any failed step, and ``forget`` makes the next try create it again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import sqlalchemy as sa

KEPT = "oubli_staging_kept"  # created by a committed transaction of this session
OPEN = "oubli_staging_open"  # created by the open transaction: gone if it rolls back


def table(conn: sa.Connection, source: sa.Table, names: Sequence[str], sources: Sequence[str]) -> str:
    """The staging table with ``names`` typed as ``source``'s ``sources``, created if this session lacks it."""
    name = "staging_" + hashlib.sha256("|".join([source.name, *names, *sources]).encode()).hexdigest()[:16]
    if name in conn.info.get(KEPT, ()) or name in conn.info.get(OPEN, ()):
        return name
    select = ", ".join(f'"{column}" AS "{target}"' for column, target in zip(sources, names, strict=True))
    conn.execute(sa.text(f'CREATE TEMPORARY TABLE IF NOT EXISTS "{name}" ON COMMIT DELETE ROWS AS '  # noqa: S608
                         f'SELECT {select} FROM "{source.name}" WITH NO DATA'))
    conn.info.setdefault(OPEN, set()).add(name)
    return name


def forget(conn: sa.Connection) -> None:
    """A staging table was missing after all: every one is created again, as on a new session."""
    conn.info.pop(KEPT, None)
    conn.info.pop(OPEN, None)


def track(engine: sa.Engine) -> None:
    """Keeps each session's memory of its staging tables in step with its commits and rollbacks."""

    @sa.event.listens_for(engine, "commit")
    def _kept(conn: sa.Connection) -> None:
        if not conn.invalidated:
            created = conn.info.pop(OPEN, None)
            if created:
                conn.info.setdefault(KEPT, set()).update(created)

    @sa.event.listens_for(engine, "rollback")
    def _lost(conn: sa.Connection) -> None:
        if not conn.invalidated:
            conn.info.pop(OPEN, None)
