"""orders_db: conformance on PostgreSQL, and exactly which rows erasure deletes, anonymises and keeps."""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

from connectors import orders_db, sql
from connectors.sql import SqlConnector
from devkit.sampledata import SCHEMAS, Bundle, bundle
from tests.conformance import ConnectorConformance, MemoryExportWriter
from tests.integration.test_sql_support import AS_OF, SEED, SqlHarness, context, insert_rows, scalar, subject_of
from worker.core.connector import Retained, Subject
from worker.core.errors import ConfigError, NeedsPersonError, PermanentError

EXPIRED_DUE = date(2021, 6, 30)  # more than 3 years before TODAY
RECENT_DUES = (date(2025, 1, 31), date(2025, 9, 30))  # retained until 2028-01-31 and 2028-09-30


def holds_orders(conn: sa.Connection, subject: Subject) -> bool:
    cid, emails = subject.customer_id, [e.lower() for e in subject.emails]
    checks = [
        ("SELECT count(*) FROM customers WHERE customer_id = :cid", {"cid": cid}),
        ("SELECT count(*) FROM addresses WHERE customer_id = :cid", {"cid": cid}),
        ("SELECT count(*) FROM consents WHERE customer_id = :cid", {"cid": cid}),
        ("SELECT count(*) FROM customer_identifiers WHERE customer_id = :cid", {"cid": cid}),
        ("SELECT count(*) FROM orders WHERE customer_id = :cid", {"cid": cid}),
        (
            "SELECT count(*) FROM invoices WHERE customer_id = :cid AND (email IS NOT NULL OR phone IS NOT NULL)",
            {"cid": cid},
        ),
    ]
    checks += [
        (f"SELECT count(*) FROM {t} WHERE lower(email) = :e", {"e": e}) for t in ("orders", "invoices") for e in emails
    ]
    return any(scalar(conn, sql, **params) for sql, params in checks)


def has_orders_and_invoices(b: Bundle) -> bool:
    return len(b.rows["orders_db"].get("invoices", [])) >= 2 and bool(b.rows["orders_db"].get("deliveries"))


def make_connector(url: str, **settings: Any) -> SqlConnector:
    return orders_db.create("orders_db", {"url": url, "billing_retention_years": 3, **settings}, context())


class TestOrdersDbConformance(ConnectorConformance):
    @pytest.fixture
    def harness(self, pg_url: str) -> Iterator[SqlHarness]:
        h = SqlHarness("orders_db", pg_url, make_connector, holds_orders, has_orders_and_invoices)
        yield h
        h.close()


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(db_url, poolclass=sa.pool.NullPool)
    SCHEMAS["orders_db"].create_all(engine)
    yield engine
    engine.dispose()


def shaped_bundle(index_from: int = 2000) -> Bundle:
    """A generated customer with invoices due long ago (expired) and recently (retained)."""
    for index in range(index_from, index_from + 500):
        b = bundle(SEED, index, AS_OF)
        rows = b.rows.get("orders_db", {})
        if len(rows.get("invoices", [])) >= 3 and rows.get("returns") and rows.get("deliveries"):
            invoices = rows["invoices"]
            invoices[0]["due_on"] = EXPIRED_DUE
            for invoice, due in zip(invoices[1:], RECENT_DUES * len(invoices), strict=False):
                invoice["due_on"] = due
            return b
    raise AssertionError("no suitable generated customer")


def table(engine: sa.Engine, name: str, where: str, **params: Any) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.text(f"SELECT * FROM {name} WHERE {where}"), params).mappings()]


def test_erasure_leaves_exactly_the_specified_rows(engine: sa.Engine, db_url: str) -> None:
    target, neighbour = shaped_bundle(2000), shaped_bundle(3000)
    for b in (target, neighbour):
        insert_rows(engine, SCHEMAS["orders_db"], b.rows["orders_db"])
    rows = target.rows["orders_db"]
    before_neighbour = {t: table(engine, t, "1=1") for t in ("customers", "orders", "invoices", "deliveries")}
    connector = make_connector(db_url)

    result = connector.erase(subject_of(target))

    # Deleted: the account, its addresses, consents and vendor identifiers.
    for name in ("customers", "addresses", "consents", "customer_identifiers"):
        assert table(engine, name, "customer_id = :c", c=target.person.customer_id) == [], name
    # Anonymised: orders keep amounts, dates and status; nothing ties them to the person.
    by_id = {o["order_id"]: o for o in rows["orders"]}
    for order in [r for r in table(engine, "orders", "1=1") if r["order_id"] in by_id]:
        original = by_id[order["order_id"]]
        for column in (
            "customer_id",
            "email",
            "phone",
            "shipping_name",
            "shipping_line1",
            "shipping_postal_code",
            "shipping_city",
            "customer_note",
        ):
            assert order[column] is None, column
        for column in ("status", "currency", "channel", "shipping_country"):
            assert order[column] == original[column]
        assert Decimal(str(order["total"])) == original["total"]
    deliveries = [d for d in table(engine, "deliveries", "1=1") if d["order_id"] in by_id]
    assert len(deliveries) == len(rows["deliveries"])
    for delivery in deliveries:
        assert all(
            delivery[c] is None
            for c in ("recipient_name", "address_line", "postal_code", "city", "phone", "instructions")
        )
        assert delivery["carrier"] and delivery["country"] == "FR"
        assert delivery["tracking_number"] is None or delivery["tracking_number"].startswith("anon-")
    returns = [r for r in table(engine, "returns", "1=1") if r["order_id"] in by_id]
    assert returns and all(r["comment"] is None and r["pickup_address"] is None for r in returns)
    assert all(r["refund_amount"] is not None for r in returns)
    lines = [line for line in table(engine, "order_lines", "1=1") if line["order_id"] in by_id]
    assert len(lines) == len(rows["order_lines"]) and all(line["embroidery_text"] is None for line in lines)

    # Retained: recent invoices, reduced to what an invoice must show; expired ones anonymised.
    invoices = {i["invoice_number"]: i for i in table(engine, "invoices", "1=1")}
    for original in rows["invoices"]:
        kept = invoices[original["invoice_number"]]
        assert kept["email"] is None and kept["phone"] is None
        assert Decimal(str(kept["amount_incl_tax"])) == original["amount_incl_tax"]
        if str(original["due_on"]) == str(EXPIRED_DUE):
            assert kept["customer_id"] is None and kept["billing_name"] is None and kept["billing_line1"] is None
        else:
            assert kept["customer_id"] == target.person.customer_id
            assert kept["billing_name"] == target.person.full_name and kept["billing_city"] == target.person.city
    latest = max(d for d in RECENT_DUES if any(str(i["due_on"]) == str(d) for i in rows["invoices"]))
    assert result.outcome == "retained"
    assert result.retained == (Retained("invoices", "billing retention", latest.replace(year=latest.year + 3)),)

    # The neighbour is untouched.
    for name, before in before_neighbour.items():
        after = table(engine, name, "1=1")
        mine = [r for r in before if r.get("customer_id") == neighbour.person.customer_id]
        assert all(r in after for r in mine), name
    connector.close()


def test_repeat_erasure_reports_the_same_retention(engine: sa.Engine, db_url: str) -> None:
    target = shaped_bundle(2000)
    insert_rows(engine, SCHEMAS["orders_db"], target.rows["orders_db"])
    connector = make_connector(db_url)
    first = connector.erase(subject_of(target))
    second = connector.erase(subject_of(target))
    assert first.outcome == second.outcome == "retained" and first.retained == second.retained
    connector.close()


def test_outcomes_without_retained_invoices(engine: sa.Engine, db_url: str) -> None:
    only_expired = shaped_bundle(2000)
    for invoice in only_expired.rows["orders_db"]["invoices"]:
        invoice["due_on"] = EXPIRED_DUE
    account_only = copy.deepcopy(shaped_bundle(3000))
    account_only.rows["orders_db"] = {
        k: v
        for k, v in account_only.rows["orders_db"].items()
        if k in ("customers", "addresses", "consents", "customer_identifiers")
    }
    for b in (only_expired, account_only):
        insert_rows(engine, SCHEMAS["orders_db"], b.rows["orders_db"])
    connector = make_connector(db_url)
    assert connector.erase(subject_of(only_expired)).outcome == "anonymized"
    assert connector.erase(subject_of(account_only)).outcome == "erased"
    assert connector.erase(subject_of(account_only)).outcome == "not_found"
    connector.close()


def test_longer_retention_from_config(engine: sa.Engine, db_url: str) -> None:
    target = shaped_bundle(2000)
    insert_rows(engine, SCHEMAS["orders_db"], target.rows["orders_db"])
    result = make_connector(db_url, billing_retention_years=10).erase(subject_of(target))
    dues = [i["due_on"] for i in target.rows["orders_db"]["invoices"]]
    assert result.retained[0].until == max(dues).replace(year=max(dues).year + 10)
    with pytest.raises(ConfigError):
        make_connector(db_url, billing_retention_years=0)
    with pytest.raises(ConfigError):
        make_connector(db_url, billing_retention_years="3")


def test_erasure_is_one_transaction(engine: sa.Engine, db_url: str) -> None:
    target = shaped_bundle(2000)
    insert_rows(engine, SCHEMAS["orders_db"], target.rows["orders_db"])
    connector = make_connector(db_url)
    connector.erase(subject_of(shaped_bundle(3000)))  # reflect the schema first
    with engine.begin() as conn:  # customers is the last table erased; invoices come first
        conn.execute(sa.text("ALTER TABLE customers RENAME TO customers_moved"))
    with pytest.raises(PermanentError):
        connector.erase(subject_of(target))
    assert all(
        i["email"] is not None for i in table(engine, "invoices", "customer_id = :c", c=target.person.customer_id)
    )
    assert table(engine, "orders", "customer_id = :c", c=target.person.customer_id)
    connector.close()


def test_email_fallback_only_when_configured(engine: sa.Engine, db_url: str) -> None:
    target = shaped_bundle(2000)
    insert_rows(engine, SCHEMAS["orders_db"], target.rows["orders_db"])
    unknown_id = Subject(
        request_id="r1", subject_ref="x", customer_id="C-000000001", emails=(f"  {target.person.email.upper()} ",)
    )
    assert make_connector(db_url).erase(unknown_id).outcome == "not_found"
    fallback = make_connector(db_url, match_by_email=True)
    assert fallback.erase(unknown_id).outcome == "retained"
    assert table(engine, "customers", "customer_id = :c", c=target.person.customer_id) == []

    twins = [shaped_bundle(3000), shaped_bundle(4000)]
    for twin in twins:
        twin.rows["orders_db"]["customers"][0]["email"] = "shared@example.org"
        insert_rows(engine, SCHEMAS["orders_db"], {"customers": twin.rows["orders_db"]["customers"]})
    with pytest.raises(NeedsPersonError) as caught:
        fallback.erase(Subject(request_id="r2", subject_ref="x", customer_id="C-0", emails=("shared@example.org",)))
    assert "shared" not in str(caught.value)


def test_export_returns_every_row_about_the_subject(engine: sa.Engine, db_url: str) -> None:
    target = shaped_bundle(2000)
    insert_rows(engine, SCHEMAS["orders_db"], target.rows["orders_db"])
    insert_rows(engine, SCHEMAS["orders_db"], shaped_bundle(3000).rows["orders_db"])
    writer = MemoryExportWriter()
    result = make_connector(db_url).export(subject_of(target), writer)
    expected = target.rows["orders_db"]
    assert result.outcome == "exported"
    assert result.records == sum(len(v) for v in expected.values())
    for name, rows in expected.items():
        exported = json.loads(writer.files[f"{name}.json"])
        assert len(exported) == len(rows), name
    customer = json.loads(writer.files["customers.json"])[0]
    assert customer["email"] == target.person.email and "password_hash" not in customer


def test_identity_lookup_reads_vendor_ids(engine: sa.Engine, db_url: str) -> None:
    target = bundle(SEED, 234, AS_OF)  # the contract's example subject
    insert_rows(engine, SCHEMAS["orders_db"], target.rows["orders_db"])
    lookup = orders_db.create_identity_lookup({"url": db_url})
    subject = Subject(request_id="r", subject_ref="x", customer_id="C-100234")
    assert lookup.identifiers(subject, "ga_client_id") == ("123.456",)
    assert lookup.identifiers(subject, "facebook_user_id") == ("10229",)
    assert lookup.identifiers(subject, "shopimind_customer_id") == ("88",)
    assert lookup.identifiers(subject, "nosto_id") == ()
    make_connector(db_url).erase(subject)
    assert lookup.identifiers(subject, "ga_client_id") == ()
    lookup.close()


def test_sample_schema_has_every_category_of_the_policy() -> None:
    tables = SCHEMAS["orders_db"].tables
    assert {
        "customers",
        "addresses",
        "consents",
        "orders",
        "order_lines",
        "deliveries",
        "returns",
        "invoices",
        "customer_identifiers",
    } <= set(tables)
    customer_columns = set(tables["customers"].columns.keys())
    assert {
        "first_name",
        "last_name",
        "phone",
        "email",
        "birth_date",
        "company_name",
        "company_contact",
        "classification",
    } <= customer_columns


@pytest.mark.parametrize("together", [sql.COUNTS_PER_STATEMENT, 9])
def test_a_batch_of_checks_counts_what_each_subjects_own_check_counts(
        pg_url: str, monkeypatch: pytest.MonkeyPatch, together: int) -> None:
    """``verify_many`` counts the batch's subjects of one shape in one statement (``UNION ALL``), by as many at once
    as ``COUNTS_PER_STATEMENT`` allows (9: fewer than orders_db checks tables, so one subject a statement). Erased,
    untouched and unknown subjects, with a customer id or by email alone: each finds what its own check finds, and
    holds data exactly when the rows say so."""
    monkeypatch.setattr(sql, "COUNTS_PER_STATEMENT", together)
    h = SqlHarness("orders_db", pg_url, lambda url: make_connector(url, match_by_email=True), holds_orders,
                   has_orders_and_invoices)
    try:
        subjects = [h.subject_with_data() for _ in range(6)]
        for erased in subjects[:3]:
            h.connector.erase(erased)
        by_email = dataclasses.replace(subjects[4], customer_id="")
        unknown = dataclasses.replace(subjects[0], customer_id="C-nobody", emails=("nobody@example.com",))
        batch = [*subjects, by_email, unknown]
        assert isinstance(h.connector, sql.SqlConnector)
        found = h.connector.verify_many(batch)
        assert found == [h.connector.verify(s) for s in batch]
        with h.engine.connect() as conn:
            holds = [holds_orders(conn, s) for s in batch]
        assert holds == [False, False, False, True, True, True, True, False]
        assert [any(r.count for r in f) for f in found] == holds  # type: ignore[union-attr]
    finally:
        h.close()
