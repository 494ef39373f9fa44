"""The SQL connector builds its conditions and statements once per shape of subject, and a call only
binds values: the same rows still match (email whitespace and ASCII case folded, on both sides), on SQLite."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from connectors import sql, sql_email
from worker.core.connector import CallResult, ConnectorContext, Result, Subject

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
STORED = ["Anna@Example.com", " bob@example.com", "CARL@EXAMPLE.COM", "Émile@example.fr", "dora@example.com"]


def database(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'shop.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE customers (customer_id TEXT PRIMARY KEY, email TEXT, phone TEXT)"))
        conn.execute(sa.text("CREATE TABLE orders (order_id INTEGER PRIMARY KEY, customer_id TEXT, email TEXT)"))
        for i, email in enumerate(STORED):
            conn.execute(sa.text("INSERT INTO customers VALUES (:c, :e, :p)"), {"c": f"c{i}", "e": email, "p": f"+{i}"})
            conn.execute(sa.text("INSERT INTO orders VALUES (:i, :c, :e)"), {"i": i, "c": f"c{i}", "e": email})
    engine.dispose()
    return url


def connector(url: str) -> sql.SqlConnector:
    settings: dict[str, Any] = {
        "url": url,
        "tables": [
            {
                "table": "customers",
                "match": {"customer_id": "customer_id", "email": "email", "phone": "phone"},
                "erase": "delete",
            },
            {
                "table": "orders",
                "match": {"email": "email"},
                "erase": "anonymise",
                "columns": {"customer_id": None, "email": None},
            },
        ],
    }
    return sql.create("shop", settings, ConnectorContext(now=lambda: NOW))


def subject(customer_id: str, *emails: str) -> Subject:
    return Subject(
        request_id="r", subject_ref="hmac-sha256:ref", customer_id=customer_id, emails=emails, phones=(), identifiers={}
    )


def outcome(result: CallResult) -> str:
    assert isinstance(result, Result)
    return result.outcome


def left(url: str) -> tuple[list[str], list[str]]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        customers = list(conn.execute(sa.text("SELECT customer_id FROM customers ORDER BY 1")).scalars())
        orders = list(conn.execute(sa.text("SELECT email FROM orders WHERE email IS NOT NULL ORDER BY 1")).scalars())
    engine.dispose()
    return customers, orders


def test_calls_of_one_shape_reuse_the_statements_and_match_the_same_rows(tmp_path: Path) -> None:
    url = database(tmp_path)
    shop = connector(url)
    assert outcome(shop.erase(subject("c0", " anna@EXAMPLE.com"))) == "anonymized"
    built = dict(shop._statements)
    plans = dict(shop._plans)
    assert outcome(shop.erase(subject("c1", "Bob@Example.com "))) == "anonymized"
    assert shop._plans == plans and shop._statements.keys() == built.keys()
    assert all(shop._statements[k] is v for k, v in built.items()), "a call of the same shape built anew"
    assert left(url) == (["c2", "c3", "c4"], ["CARL@EXAMPLE.COM", "dora@example.com", "Émile@example.fr"])

    # Another shape (no customer id, two emails, É up to ASCII case) gets its own statements.
    assert outcome(shop.erase(subject("", "carl@example.com", "Émile@EXAMPLE.FR"))) == "anonymized"
    assert len(shop._plans) == 2
    assert left(url) == (["c4"], ["dora@example.com"])
    assert outcome(shop.erase(subject("c9", "nobody@example.com"))) == "not_found"
    assert left(url) == (["c4"], ["dora@example.com"])

    # The checks after an erasure too: one statement for every table, built once per shape and number of subjects.
    erasures = len(shop._statements)
    assert [r.count for r in shop.verify(subject("c0", "anna@example.com"))] == [0, 0]
    built = dict(shop._statements)
    assert len(built) == erasures + 1
    assert [r.count for r in shop.verify(subject("c4", "DORA@example.com"))] == [1, 1]
    assert shop._statements.keys() == built.keys()
    assert all(shop._statements[k] is v for k, v in built.items()), "a check of the same shape built anew"
    shop.close()


def test_bound_condition_matches_what_condition_matches(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'emails.db'}")
    table = sa.Table("t", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True), sa.Column("email", sa.Text))
    table.metadata.create_all(engine)
    asked = [[" ANNA@example.com"], ["émile@example.fr", "Bob@example.com"], ["\u00a0"], ["Σ@x.gr"], ["\u212aarl@x.fr"]]
    with engine.begin() as conn:
        conn.execute(sa.insert(table), [{"email": e} for e in [*STORED, "σ@x.gr", "ς@X.GR", "Σ@x.GR", "karl@x.fr"]])
        for emails in asked:
            expected = conn.execute(sa.select(table.c.id).where(sql_email.condition(table.c.email, emails)))
            bound = sql_email.bound_condition(table.c.email, "e")
            found = conn.execute(sa.select(table.c.id).where(bound), {"e": sql_email.wanted(emails)})
            assert sorted(found.scalars()) == sorted(expected.scalars()), emails
        sigma = conn.execute(sa.select(table.c.email).where(sql_email.condition(table.c.email, ["Σ@X.gr"])))
        assert sorted(sigma.scalars()) == ["Σ@x.GR"]
    engine.dispose()
