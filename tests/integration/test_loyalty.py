"""loyalty: conformance on PostgreSQL, and erasure of every loyalty row of the subject only."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from connectors import loyalty
from connectors.sql import SqlConnector
from tests.conformance import ConnectorConformance, MemoryExportWriter
from tests.integration.test_sql_support import SqlHarness, context, scalar
from worker.core.connector import Subject

TABLES = ("loyalty_accounts", "loyalty_history", "promo_codes")


def make_connector(url: str) -> SqlConnector:
    return loyalty.create("loyalty", {"url": url}, context())


def holds(conn: sa.Connection, subject: Subject) -> bool:
    return any(scalar(conn, f"SELECT count(*) FROM {t} WHERE customer_id = :c", c=subject.customer_id) for t in TABLES)


class TestLoyaltyConformance(ConnectorConformance):
    @pytest.fixture
    def harness(self, pg_url: str) -> Iterator[SqlHarness]:
        h = SqlHarness("loyalty", pg_url, make_connector, holds, lambda b: bool(b.rows["loyalty"].get("promo_codes")))
        yield h
        h.close()


def test_erasure_deletes_every_loyalty_row_of_the_subject_only(tmp_path: Path) -> None:
    h = SqlHarness(
        "loyalty",
        f"sqlite:///{tmp_path / 'loyalty.db'}",
        make_connector,
        holds,
        lambda b: bool(b.rows["loyalty"].get("promo_codes")),
    )
    target, other = h.subject_with_data(), h.subject_with_data()
    with h.engine.connect() as conn:
        others_before = {
            t: scalar(conn, f"SELECT count(*) FROM {t} WHERE customer_id = :c", c=other.customer_id) for t in TABLES
        }
    writer = MemoryExportWriter()
    exported = h.connector.export(target, writer)
    assert exported.outcome == "exported"
    assert set(writer.files) == {f"{t}.json" for t in TABLES}
    assert exported.records == sum(len(json.loads(v)) for v in writer.files.values())

    assert h.connector.erase(target).outcome == "erased"
    assert not h.holds_personal_data(target)
    with h.engine.connect() as conn:
        for t in TABLES:
            assert (
                scalar(conn, f"SELECT count(*) FROM {t} WHERE customer_id = :c", c=other.customer_id)
                == others_before[t]
            )
    assert h.connector.erase(target).outcome == "not_found"
    assert h.connector.export(target, MemoryExportWriter()).outcome == "not_found"
    h.close()
