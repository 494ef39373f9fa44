"""newsletter: conformance on PostgreSQL; erasure leaves only a keyed hash, and imports refuse it."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from connectors import newsletter
from connectors.sql import SqlConnector
from tests.conformance import ConnectorConformance, MemoryExportWriter
from tests.integration.test_sql_support import AS_OF, SqlHarness, context, scalar
from worker.core.connector import Subject
from worker.core.errors import ConfigError

KEY = "test-suppression-key-0123456789"


def make_connector(url: str) -> SqlConnector:
    return newsletter.create("newsletter", {"url": url, "suppression_key": KEY}, context())


def holds(conn: sa.Connection, subject: Subject) -> bool:
    needle = subject.emails[0].lower()
    return bool(
        scalar(
            conn,
            "SELECT count(*) FROM subscribers WHERE lower(email) = :e OR customer_id = :c",
            e=needle,
            c=subject.customer_id,
        )
        or scalar(conn, "SELECT count(*) FROM suppressions WHERE email_hmac LIKE :e", e=f"%{needle}%")
    )


class TestNewsletterConformance(ConnectorConformance):
    @pytest.fixture
    def harness(self, pg_url: str) -> Iterator[SqlHarness]:
        h = SqlHarness("newsletter", pg_url, make_connector, holds, lambda b: True)
        yield h
        h.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlHarness]:
    url = f"sqlite:///{tmp_path / 'newsletter.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    h = SqlHarness("newsletter", url, make_connector, holds, lambda b: True)
    yield h
    h.close()


def test_erasure_keeps_only_a_keyed_hash_and_imports_refuse_it(harness: SqlHarness) -> None:
    subject = harness.subject_with_data()
    writer = MemoryExportWriter()
    result = harness.connector.export(subject, writer)
    assert result.outcome == "exported"
    assert {"subscribers.json", "subscriber_professions.json", "consent_events.json"} <= set(writer.files)

    assert harness.connector.erase(subject).outcome == "erased"
    with harness.engine.connect() as conn:
        assert scalar(conn, "SELECT count(*) FROM subscribers WHERE customer_id = :c", c=subject.customer_id) == 0
        assert scalar(conn, "SELECT count(*) FROM consent_events") == 0
        stored = [r[0] for r in conn.execute(sa.text("SELECT email_hmac FROM suppressions"))]
    expected = hmac.new(KEY.encode(), subject.emails[0].lower().encode(), hashlib.sha256).hexdigest()
    assert stored == [f"hmac-sha256:{expected}"]
    assert harness.connector.erase(subject).outcome == "not_found"  # and no second hash
    with harness.engine.connect() as conn:
        assert scalar(conn, "SELECT count(*) FROM suppressions") == 1

    importer = newsletter.NewsletterImporter(harness.engine, KEY.encode())
    spelled_differently = f"  {subject.emails[0].upper()} "
    report = importer.import_subscribers(
        [
            {"email": spelled_differently, "professions": ["construction"]},
            {"email": "new.person@example.org", "professions": ["health", "health"]},
            {"email": "not an email"},
        ],
        source="trade_show",
        now=AS_OF,
    )
    assert report == newsletter.ImportReport(imported=1, refused_suppressed=1, invalid=1)
    with harness.engine.connect() as conn:
        emails = [r[0] for r in conn.execute(sa.text("SELECT email FROM subscribers"))]
    assert emails == ["new.person@example.org"]
    again = importer.import_subscribers([{"email": "New.Person@example.org"}], source="trade_show", now=AS_OF)
    assert again == newsletter.ImportReport(already_subscribed=1)


def test_a_suppression_key_is_required() -> None:
    for settings in ({"url": "sqlite://"}, {"url": "sqlite://", "suppression_key": "short"}):
        with pytest.raises(ConfigError):
            newsletter.create("newsletter", settings, context())


def test_an_import_finds_a_subscriber_whose_address_differs_in_non_ascii_case(harness: SqlHarness) -> None:
    # SQLite's own lower() folds only ASCII: without the shared fold this would subscribe twice.
    importer = newsletter.NewsletterImporter(harness.engine, KEY.encode())
    first = importer.import_subscribers([{"email": "ÉLODIE.Ÿ@EXAMPLE.FR"}], source="trade_show", now=AS_OF)
    assert first == newsletter.ImportReport(imported=1)
    again = importer.import_subscribers([{"email": " élodie.ÿ@example.fr "}], source="partner_form", now=AS_OF)
    assert again == newsletter.ImportReport(already_subscribed=1)
