"""Engines and migrations. PostgreSQL in production; SQLite is the embedded single-worker default."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

MIGRATIONS = Path(__file__).with_name("migrations")


def create_engine(url: str, *, pool_size: int = 5) -> sa.Engine:
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            # WAL + FULL sync: a committed command survives SIGKILL and power loss.
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    # pool_pre_ping lets a worker ride out a database restart without a poisoned pool.
    return sa.create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)


def _alembic_config(connection: sa.Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


MIGRATION_LOCK = 0x0B1_1  # any constant: PostgreSQL advisory locks are keyed by a 64-bit number


def migrate(engine: sa.Engine, revision: str = "head") -> None:
    """Upgrades the schema; safe when several workers start with ``--migrate`` at once."""
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # Serialises concurrent migrators; the second then finds nothing to do.
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        command.upgrade(_alembic_config(connection), revision)


def pending_migrations(engine: sa.Engine) -> bool:
    """True when the database is behind the code: the worker refuses to start then."""
    with engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_heads()
        head = ScriptDirectory.from_config(_alembic_config(connection)).get_heads()
    return set(current) != set(head)
