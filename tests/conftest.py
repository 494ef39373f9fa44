"""Factory fixtures: a fresh PostgreSQL schema, S3 bucket and Kafka topics for each test.

Markers come from here, not from hand: every test is marked with its tier (the folder it sits in,
``unit``, ``integration`` or ``e2e``) and with the services its fixtures reach (``kafka``,
``postgres``, ``s3``), so ``-m`` selections cannot drift from what a test really needs.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import boto3
import pytest
import sqlalchemy as sa
import structlog

from devkit import services
from devkit.netproxy import Proxy
from tests.kafka_janitor import TopicJanitor
from worker.store import db

TIERS = ("unit", "integration", "e2e")
# A fixture's name -> the service it needs. db_url's PostgreSQL param carries its own mark.
SERVICE_FIXTURES = {"kafka_bootstrap": "kafka", "pg_url": "postgres", "pg_schema_urls": "postgres",
                    "proxied_store": "postgres", "s3_client": "s3", "s3_bucket": "s3"}


_janitor = TopicJanitor(services.KAFKA_BOOTSTRAP)


def pytest_configure(config: pytest.Config) -> None:
    _janitor.install()


def pytest_unconfigure(config: pytest.Config) -> None:
    failures = _janitor.finish()
    _janitor.uninstall()
    if failures:
        print(f"\nkafka_janitor: {len(failures)} topics not deleted: {failures[:3]}")


@pytest.fixture(autouse=True)
def _delete_created_topics() -> Iterator[None]:
    """Deletes the topics the test created on the shared broker (tests/kafka_janitor.py says why)."""
    yield
    _janitor.sweep()


@pytest.fixture(autouse=True)
def _structlog_defaults() -> Iterator[None]:
    """A test that configures logging (every CLI run does, at INFO) must not decide what a later test's
    ``capture_logs`` sees: a filter at INFO dropped the debug lines a test of the loop counts."""
    yield
    structlog.reset_defaults()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    tests_dir = Path(__file__).parent
    for item in items:
        relative = item.path.relative_to(tests_dir).parts
        if len(relative) > 1 and relative[0] in TIERS:
            item.add_marker(relative[0])
        needs = {SERVICE_FIXTURES[f] for f in getattr(item, "fixturenames", ()) if f in SERVICE_FIXTURES}
        for service in sorted(needs):
            item.add_marker(service)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A SQLAlchemy URL whose connections see only a brand-new schema, dropped afterwards."""
    base = services.require_postgres()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(base, poolclass=sa.pool.NullPool)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    separator = "&" if "?" in base else "?"
    yield f"{base}{separator}options={quote(f'-csearch_path={schema}')}"
    with admin.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A system's database, once on SQLite and once on a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'system.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def s3_client() -> Any:
    endpoint = services.require_s3()
    return boto3.client("s3", endpoint_url=endpoint, **services.S3_CREDENTIALS)


@pytest.fixture
def s3_bucket(s3_client: Any) -> str:
    """A fresh, versioned bucket."""
    name = f"t-{uuid.uuid4().hex[:16]}"
    s3_client.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    s3_client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    return name


@pytest.fixture
def kafka_bootstrap() -> str:
    return services.require_kafka()


@pytest.fixture
def pg_schema_urls() -> Iterator[Any]:
    """A factory of fresh schemas, for tests that need several databases (one per system)."""
    base = services.require_postgres()
    admin = sa.create_engine(base, poolclass=sa.pool.NullPool)
    made: list[str] = []

    def make() -> str:
        schema = f"t_{uuid.uuid4().hex[:12]}"
        with admin.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        made.append(schema)
        separator = "&" if "?" in base else "?"
        return f"{base}{separator}options={quote(f'-csearch_path={schema}')}"

    yield make
    with admin.begin() as conn:
        for schema in made:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


@pytest.fixture
def proxied_store(pg_url: str) -> Iterator[tuple[str, Proxy]]:
    """A migrated PostgreSQL store reached through a TCP proxy the test can cut: (url, proxy)."""
    url = sa.make_url(pg_url)
    proxy = Proxy(url.host or "127.0.0.1", url.port or 5432)
    proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    db.migrate(db.create_engine(proxied))
    yield proxied, proxy
    proxy.close()
