"""Shared pieces for the SQL connectors' tests, and the tests of the rule-set parser and error mapping.

``SqlHarness`` satisfies ``tests.conformance.Harness`` for any SQL-backed connector: it loads
generated customers into a real database, reaches it through a TCP proxy that can be cut (a
restart, as the connector sees it), and breaks the schema for permanent failures.
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa

from connectors.sql_config import normalise_email, parse
from connectors.sql_errors import db_error
from devkit.netproxy import Proxy
from devkit.sampledata import SCHEMAS, Bundle, bundle
from worker.core.connector import Connector, ConnectorContext, Subject
from worker.core.errors import ConfigError, PermanentError, RetryableError

AS_OF = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
SEED = 7


def context() -> ConnectorContext:
    return ConnectorContext(now=lambda: AS_OF)


def subject_of(b: Bundle, *, with_identifiers: bool = True) -> Subject:
    p = b.person
    identifiers: dict[str, tuple[str, ...]] = {}
    if with_identifiers:
        for row in b.rows.get("orders_db", {}).get("customer_identifiers", []):
            identifiers[row["kind"]] = (*identifiers.get(row["kind"], ()), row["value"])
    return Subject(
        request_id=str(uuid.uuid4()),
        subject_ref=f"hmac-sha256:{uuid.uuid4().hex}",
        customer_id=p.customer_id,
        emails=(p.email,),
        phones=(p.phone,),
        identifiers=identifiers,
    )


def insert_rows(engine: sa.Engine, metadata: sa.MetaData, rows: dict[str, list[dict[str, Any]]]) -> None:
    with engine.begin() as conn:
        for table in metadata.sorted_tables:
            if rows.get(table.name):
                conn.execute(sa.insert(table), rows[table.name])


class SqlHarness:
    """Conformance harness for one SQL system, on the database at ``url`` (a fresh schema)."""

    def __init__(
        self,
        system: str,
        url: str,
        factory: Callable[[str], Connector],
        holds: Callable[[sa.Connection, Subject], bool],
        wants: Callable[[Bundle], bool],
    ) -> None:
        self.system = system
        self.url = url
        self.engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        self.metadata = SCHEMAS[system]
        self.metadata.create_all(self.engine)
        parts = sa.make_url(url)
        self.proxy: Proxy | None = None
        connector_url = url
        if parts.get_backend_name() == "postgresql":
            self.proxy = Proxy(parts.host or "127.0.0.1", parts.port or 5432)
            connector_url = parts.set(host="127.0.0.1", port=self.proxy.port).render_as_string(hide_password=False)
        self.connector = factory(connector_url)
        self._holds = holds
        self._wants = wants
        self._indexes = itertools.count(1000)

    def bundle(self) -> Bundle:
        for index in self._indexes:
            candidate = bundle(SEED, index, AS_OF)
            if candidate.rows.get(self.system) and self._wants(candidate):
                return candidate
        raise AssertionError("unreachable")

    def load(self, b: Bundle) -> Subject:
        insert_rows(self.engine, self.metadata, b.rows[self.system])
        return subject_of(b)

    def subject_with_data(self) -> Subject:
        return self.load(self.bundle())

    def subject_without_data(self) -> Subject:
        return Subject(
            request_id=str(uuid.uuid4()),
            subject_ref="hmac-sha256:none",
            customer_id="C-999999999",
            emails=("nobody.here@example.org",),
            phones=("+33100000000",),
        )

    def holds_personal_data(self, subject: Subject) -> bool:
        with self.engine.connect() as conn:
            return self._holds(conn, subject)

    @contextlib.contextmanager
    def transient_failure(self) -> Iterator[None]:
        if self.proxy is None:
            pytest.skip("transient failures are exercised against PostgreSQL")
        with self.proxy.outage():
            yield

    @contextlib.contextmanager
    def permanent_failure(self) -> Iterator[None]:
        """The schema the connector expects is gone: a configuration problem, not a blip."""
        table = self.metadata.sorted_tables[0].name
        with self.engine.begin() as conn:
            conn.execute(sa.text(f'ALTER TABLE "{table}" RENAME TO "{table}_moved"'))
        try:
            yield
        finally:
            with self.engine.begin() as conn:
                conn.execute(sa.text(f'ALTER TABLE "{table}_moved" RENAME TO "{table}"'))

    def close(self) -> None:
        self.connector.close()
        if self.proxy is not None:
            self.proxy.close()
        self.engine.dispose()


def scalar(conn: sa.Connection, sql: str, **params: Any) -> Any:
    return conn.execute(sa.text(sql), params).scalar()


# -- tests of the rule-set parser and of the error mapping --------------------------------------

BASE = {"url": "sqlite://", "tables": [{"table": "t", "match": {"customer_id": "c"}, "erase": "delete"}]}


def with_tables(*tables: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {**BASE, "tables": list(tables), **extra}


@pytest.mark.parametrize(
    "settings",
    [
        {"tables": BASE["tables"]},
        {**BASE, "url": "not a url"},
        {**BASE, "tables": []},
        {**BASE, "surprise": 1},
        with_tables({"table": "t", "match": {"customer_id": "c"}, "erase": "shred"}),
        with_tables({"table": "t; drop", "match": {"customer_id": "c"}, "erase": "delete"}),
        with_tables({"table": "t", "match": {}, "erase": "delete"}),
        with_tables({"table": "t", "match": {"customer_id": "c"}, "erase": "anonymise", "columns": {"x": None}}),
        with_tables({"table": "t", "match": {"email": "e"}, "erase": "anonymise", "columns": {"e": "keep"}}),
        with_tables({"table": "t", "match": {"customer_id": "c"}, "erase": "retain"}),
        with_tables(
            {
                "table": "t",
                "match": {"customer_id": "c"},
                "erase": "retain",
                "retention": {"category": "x", "legal_basis": "y", "date_column": "d"},
            }
        ),
        # receipt.v1 holds a retained category of at most 64 characters and a legal basis of at most 200
        *(with_tables({"table": "t", "match": {"customer_id": "c"}, "erase": "retain", "columns": {"x": None},
                       "retention": {"category": "x", "legal_basis": "y", "date_column": "d", "years": 1, **long}})
          for long in ({"category": "c" * 65}, {"legal_basis": "b" * 201})),
        with_tables({"table": "t", "match": {"customer_id": "c"}, "erase": "delete", "columns": {"c": "shred"}}),
        with_tables(
            {
                "table": "child",
                "match": {"via": {"table": "t", "column": "a", "parent_column": "b"}},
                "erase": "delete",
            },
            {"table": "t", "match": {"customer_id": "c"}, "erase": "delete"},
        ),
        with_tables({"table": "t", "match": {"email": "e"}, "erase": "delete", "suppress": "e"}),
        with_tables(
            {"table": "t", "match": {"email": "e"}, "erase": "delete", "suppress": "e"},
            suppression={"table": "s", "column": "h", "key": "short"},
        ),
        {**BASE, "subject": {"table": "t", "key": "c", "email_fallback": True}},
    ],
)
def test_unusable_rule_sets_are_refused_at_start(settings: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        parse("sys", settings)


def test_config_error_never_echoes_the_url_secret() -> None:
    config = parse("sys", {**BASE, "url": "postgresql+psycopg://u:s3cret@db/x"})
    assert "s3cret" not in repr(config)
    with pytest.raises(ConfigError) as caught:
        parse("sys", {**BASE, "url": "postgresql+psycopg://u:s3cret@db/x", "pool_size": -1})
    assert "s3cret" not in str(caught.value)


def test_email_normalisation_removes_whitespace_and_case() -> None:
    assert normalise_email("  Marie.Dupont@Example.FR\t") == "marie.dupont@example.fr"
    assert normalise_email("marie.dupont @example.fr\u00a0\r\n") == "marie.dupont@example.fr"


@pytest.mark.postgres
def test_bad_credentials_are_permanent_and_unreachable_is_retryable(pg_url: str) -> None:
    url = sa.make_url(pg_url)
    bad = sa.create_engine(url.set(password="wrong-password"), poolclass=sa.pool.NullPool)
    with pytest.raises(sa.exc.OperationalError) as caught:
        bad.connect()
    error = db_error("orders_db", "erasure", caught.value)
    assert isinstance(error, PermanentError) and "wrong-password" not in str(error)

    with socket.create_server(("127.0.0.1", 0)) as probe:
        free_port = probe.getsockname()[1]
    down = sa.create_engine(url.set(port=free_port), poolclass=sa.pool.NullPool)
    with pytest.raises(sa.exc.OperationalError) as caught:
        down.connect()
    assert isinstance(db_error("orders_db", "erasure", caught.value), RetryableError)


@pytest.mark.postgres
def test_a_database_that_turned_read_only_is_an_outage_not_a_refusal(pg_url: str) -> None:
    """SQLSTATE 25006: what a primary demoted in a failover (or a hot standby a pool still points at) answers every
    write until the connections move to the new primary. A shop database's erasure is retried, not failed for a
    person to retry, and oubli's own store pauses intake as for any outage instead of calling the command poison."""
    from worker.store.faults import is_outage  # noqa: PLC0415 - oubli's store, next to the connectors' databases

    engine = sa.create_engine(pg_url, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE held (email text)"))
    with pytest.raises(sa.exc.DBAPIError) as caught, engine.begin() as conn:
        conn.execute(sa.text("SET TRANSACTION READ ONLY"))
        conn.execute(sa.text("DELETE FROM held WHERE email = 'marie.dupont@example.fr'"))
    engine.dispose()
    assert getattr(caught.value.orig, "sqlstate", None) == "25006"
    error = db_error("orders_db", "erasure", caught.value)
    assert isinstance(error, RetryableError) and error.code == "sql_unavailable" and "marie" not in str(error)
    assert is_outage(caught.value)


@pytest.mark.postgres
def test_driver_messages_with_row_values_are_not_copied(pg_url: str) -> None:
    engine = sa.create_engine(pg_url, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE u (email text primary key)"))
        conn.execute(sa.text("INSERT INTO u VALUES ('marie.dupont@example.fr')"))
    with pytest.raises(sa.exc.IntegrityError) as caught, engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO u VALUES ('marie.dupont@example.fr')"))
    error = db_error("newsletter", "erasure", caught.value)
    assert "marie" not in str(error) and "23505" in str(error)
    engine.dispose()


def test_any_system_can_be_configured_as_a_plain_rule_set(tmp_path: Any) -> None:
    """``connector: sql`` with the rules in config: the same engine as the built-in systems."""
    from connectors import registry

    url = f"sqlite:///{tmp_path / 'crm.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE TABLE contacts (id INTEGER PRIMARY KEY, customer_id TEXT, email TEXT, "
                "score INTEGER, visited_on DATE)"
            )
        )
        conn.execute(sa.text("CREATE TABLE notes (id INTEGER PRIMARY KEY, contact_id INTEGER, body TEXT)"))
        conn.execute(
            sa.text(
                "INSERT INTO contacts VALUES (1, NULL, ' Jo@Example.org', 7, '2026-01-01'), "
                "(2, 'C-2', 'other@example.org', 3, '2026-01-02')"
            )
        )
        conn.execute(sa.text("INSERT INTO notes VALUES (1, 1, 'called Jo'), (2, 2, 'other')"))
    settings = {
        "url": url,
        "tables": [
            {
                "table": "contacts",
                "match": {"customer_id": "customer_id", "email": "email"},
                "erase": "anonymise",
                "columns": {"customer_id": None, "email": "pseudonymise", "visited_on": {"set": "1970-01-01"}},
            },
            {
                "table": "notes",
                "match": {"via": {"table": "contacts", "column": "contact_id", "parent_column": "id"}},
                "erase": "delete",
            },
        ],
    }
    connector = registry.build("crm", "sql", settings, context())
    subject = Subject(request_id="r", subject_ref="x", customer_id="C-1", emails=("jo@example.org",))
    assert connector.erase(subject).outcome == "anonymized"
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT id, customer_id, email, score, visited_on FROM contacts ORDER BY id")).all()
        notes = conn.execute(sa.text("SELECT id FROM notes")).scalars().all()
    assert rows[0][1] is None and rows[0][2].startswith("anon-") and rows[0][3] == 7 and rows[0][4] == "1970-01-01"
    assert rows[1] == (2, "C-2", "other@example.org", 3, "2026-01-02")
    assert notes == [2]
    assert connector.erase(subject).outcome == "not_found"
    connector.close()
    engine.dispose()
