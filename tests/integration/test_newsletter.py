"""newsletter: conformance on PostgreSQL; erasure leaves only a keyed hash, and imports refuse it."""

from __future__ import annotations

import hashlib
import hmac
import json
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


def test_only_ascii_case_is_folded_so_a_kelvin_sign_is_not_the_ascii_neighbour(harness: SqlHarness) -> None:
    """str.lower() and PostgreSQL's lower() make U+212A an ASCII k: an erasure for the Kelvin-sign
    address deleted kelvin@x.fr's subscription, someone else's."""
    importer = newsletter.NewsletterImporter(harness.engine, KEY.encode())
    first = importer.import_subscribers([{"email": "kelvin@x.fr"}, {"email": "ÉLODIE@X.FR"}], source="trade_show",
                                        now=AS_OF)
    assert first == newsletter.ImportReport(imported=2)
    again = importer.import_subscribers([{"email": " Kelvin@X.FR "}, {"email": "ÉLODIE@x.fr"}, {"email": "élodie@x.fr"},
                                         {"email": "\u212aelvin@x.fr"}], source="partner_form", now=AS_OF)
    assert again == newsletter.ImportReport(already_subscribed=2, imported=2)

    kelvin_sign = Subject(request_id="r", subject_ref="x", customer_id="C-none", emails=("\u212aELVIN@x.fr",))
    writer = MemoryExportWriter()
    assert harness.connector.export(kelvin_sign, writer).outcome == "exported"
    assert [r["email"] for r in json.loads(writer.files["subscribers.json"])] == ["\u212aelvin@x.fr"]
    assert harness.connector.erase(kelvin_sign).outcome == "erased"
    with harness.engine.connect() as conn:
        left = sorted(conn.execute(sa.text("SELECT email FROM subscribers")).scalars())
    assert left == sorted(["kelvin@x.fr", "ÉLODIE@X.FR", "élodie@x.fr"])
