"""The store's schema ships as migrations: a worker refuses a database that is behind, and every
migration goes up and down on both SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command

from devkit.pipeline import raw_settings
from worker import config
from worker.app import Worker
from worker.core.errors import ConfigError
from worker.store import db
from worker.store.schema import metadata


def test_a_worker_refuses_a_store_that_is_behind(tmp_path: Path) -> None:
    settings = config.build(raw_settings(store_url=f"sqlite:///{tmp_path / 'behind.db'}", bootstrap="127.0.0.1:1",
                                         systems={}), env={})
    with pytest.raises(ConfigError, match="oubli migrate"):
        Worker(settings, serve_http=False)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migrations_upgrade_downgrade_and_match_the_table_definitions(backend: str, tmp_path: Path,
                                                                      request: pytest.FixtureRequest) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}" if backend == "sqlite" else request.getfixturevalue("pg_url")
    engine = db.create_engine(url)
    db.migrate(engine)
    assert not db.pending_migrations(engine)
    inspector = sa.inspect(engine)
    for table in metadata.sorted_tables:
        migrated = {c["name"] for c in inspector.get_columns(table.name)}
        assert migrated == {c.name for c in table.columns}, table.name
        indexes = {i["name"] for i in inspector.get_indexes(table.name) if not i.get("unique")}
        assert indexes == {i.name for i in table.indexes if not i.unique}, table.name
    with engine.begin() as connection:
        command.downgrade(db._alembic_config(connection), "base")
    assert set(sa.inspect(engine).get_table_names()) <= {"alembic_version"}
    db.migrate(engine)
    assert not db.pending_migrations(engine)
    engine.dispose()


def test_concurrent_migrators_do_not_race(pg_url: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    engines = [db.create_engine(pg_url) for _ in range(4)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(db.migrate, engines))  # raises if two of them tried to create the same tables
    assert not db.pending_migrations(engines[0])
    for engine in engines:
        engine.dispose()
