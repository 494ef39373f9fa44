"""contact_forms: conformance on PostgreSQL; messages found by email whatever its case and spacing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta

import pytest
import sqlalchemy as sa

from connectors import contact_forms
from connectors.sql import SqlConnector
from connectors.sql_config import normalise_email
from devkit.sampledata import SCHEMAS
from tests.conformance import ConnectorConformance, MemoryExportWriter
from tests.integration.test_sql_support import AS_OF, SqlHarness, context, insert_rows, scalar
from worker.core.connector import Subject


def make_connector(url: str) -> SqlConnector:
    return contact_forms.create("contact_forms", {"url": url}, context())


def holds(conn: sa.Connection, subject: Subject) -> bool:
    """Checked in Python, independently of the connector's SQL normalisation."""
    wanted = {normalise_email(e) for e in subject.emails}
    return any(
        normalise_email(e) in wanted for e in conn.execute(sa.text("SELECT email FROM contact_messages")).scalars()
    )


class TestContactFormsConformance(ConnectorConformance):
    @pytest.fixture
    def harness(self, pg_url: str) -> Iterator[SqlHarness]:
        h = SqlHarness("contact_forms", pg_url, make_connector, holds, lambda b: True)
        yield h
        h.close()


def message(message_id: int, email: str, text: str) -> dict[str, object]:
    return {
        "message_id": message_id,
        "received_at": AS_OF - timedelta(days=message_id),
        "email": email,
        "topic": "order",
        "message": text,
        "order_ref": None,
        "status": "new",
    }


def test_erasure_matches_email_whatever_case_and_whitespace(db_url: str) -> None:
    engine = sa.create_engine(db_url, poolclass=sa.pool.NullPool)
    SCHEMAS["contact_forms"].create_all(engine)
    typed = [
        "marie.dupont@example.fr",
        "  Marie.Dupont@Example.FR ",
        "MARIE.DUPONT@EXAMPLE.FR\t",
        "marie.dupont @example.fr",
        "\u00a0marie.dupont@example.fr\r\n",
    ]
    others = ["marie.dupont@example.com", "jean.marie.dupont@example.fr", "marie.dupont2@example.fr"]
    rows = [message(i + 1, e, f"message {i}") for i, e in enumerate(typed + others)]
    reply = {"reply_id": 1, "message_id": 2, "sent_at": AS_OF, "agent": "yann", "body": "Bonjour Marie"}
    insert_rows(engine, SCHEMAS["contact_forms"], {"contact_messages": rows, "contact_replies": [reply]})
    subject = Subject(request_id="r", subject_ref="x", customer_id="C-100234", emails=(" Marie.Dupont@example.fr",))
    connector = make_connector(db_url)

    writer = MemoryExportWriter()
    exported = connector.export(subject, writer)
    assert exported.records == len(typed) + 1
    assert len(json.loads(writer.files["contact_messages.json"])) == len(typed)

    assert connector.erase(subject).outcome == "erased"
    with engine.connect() as conn:
        left = [r.email for r in conn.execute(sa.text("SELECT email FROM contact_messages ORDER BY message_id"))]
        assert left == others
        assert scalar(conn, "SELECT count(*) FROM contact_replies") == 0
    assert connector.erase(subject).outcome == "not_found"
    connector.close()
    engine.dispose()


def test_subject_without_email_is_not_found(db_url: str) -> None:
    engine = sa.create_engine(db_url, poolclass=sa.pool.NullPool)
    SCHEMAS["contact_forms"].create_all(engine)
    insert_rows(engine, SCHEMAS["contact_forms"], {"contact_messages": [message(1, "a@example.fr", "hello")]})
    subject = Subject(request_id="r", subject_ref="x", customer_id="C-1")
    assert make_connector(db_url).erase(subject).outcome == "not_found"
    engine.dispose()
