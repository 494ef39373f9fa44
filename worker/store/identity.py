"""A worker id's identity lock: proof that no other live process runs under the same ``worker_id``.

Held for the process's life and released by the OS or the database when it dies, even by SIGKILL
(PostgreSQL: a session advisory lock; SQLite: ``flock``). Only its holder may reclaim its dead
predecessor's task leases at once (``Claims.reclaim_own_leases``). Edge cases: docs/architecture.md."""

from __future__ import annotations

import fcntl
import hashlib
from pathlib import Path
from typing import IO

import sqlalchemy as sa


def _key(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big", signed=True)


class IdentityLock:
    def __init__(self, engine: sa.Engine, worker_id: str) -> None:
        self.engine = engine
        self.worker_id = worker_id
        self._connection: sa.Connection | None = None
        self._file: IO[bytes] | None = None

    def acquire(self) -> bool:
        """Takes the lock without waiting; False when another live process holds this id."""
        if self._connection is not None or self._file is not None:
            return True
        if self.engine.dialect.name == "postgresql":
            return self._acquire_advisory()
        return self._acquire_file()

    def release(self) -> None:
        if self._connection is not None:
            try:
                # Closed for good, not returned to the pool: the session ends, and its advisory lock.
                self._connection.invalidate()
            except sa.exc.DBAPIError:
                pass  # the store is gone already, and the lock with the session
            self._connection = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def _acquire_advisory(self) -> bool:
        connection = self.engine.connect()
        try:
            # Advisory locks span the database: the schema keeps stores that share one apart.
            schema = connection.execute(sa.text("SELECT current_schema()")).scalar_one()
            key = _key(f"oubli-worker:{schema}:{self.worker_id}")
            held = bool(connection.execute(sa.text("SELECT pg_try_advisory_lock(:key)"), {"key": key}).scalar_one())
            connection.commit()  # a session lock outlives the transaction; don't sit idle in one
        except BaseException:
            connection.close()
            raise
        if held:
            self._connection = connection
        else:
            connection.close()
        return held

    def _acquire_file(self) -> bool:
        database = self.engine.url.database
        if not database or database == ":memory:":
            return True  # no other process can see this store at all
        digest = hashlib.sha256(self.worker_id.encode()).hexdigest()[:16]
        handle = Path(f"{database}.worker-{digest}.lock").open("ab")  # noqa: SIM115 - held for the process's life
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return False
        self._file = handle
        return True
