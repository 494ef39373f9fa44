"""The sample data generator: deterministic, plausible, loadable, and found by every connector."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from connectors import call_recordings, contact_forms, loyalty, newsletter, orders_db
from devkit import services
from devkit.sampledata import DEMO_INDEX, bundle, generate, seed_systems
from tests.conformance import MemoryExportWriter
from tests.integration.test_sql_support import AS_OF, context
from worker.core.connector import Subject

ROOT = Path(__file__).resolve().parents[2]
SPEC_SUBJECT = Subject(
    request_id="5f0c9a8e-3c1e-4f4a-9d55-0d2b1f7b8a10",
    subject_ref="hmac-sha256:x",
    customer_id="C-100234",
    emails=("marie.dupont@example.fr",),
    phones=("+33612345678",),
    identifiers={"ga_client_id": ("123.456",), "facebook_user_id": ("10229",), "shopimind_customer_id": ("88",)},
)


def test_deterministic_from_the_seed_and_independent_of_the_total() -> None:
    assert bundle(42, 17, AS_OF) == bundle(42, 17, AS_OF)
    assert bundle(42, 17, AS_OF) != bundle(43, 17, AS_OF)
    assert list(generate(42, 30, AS_OF))[17] == bundle(42, 17, AS_OF)


def test_distributions_are_plausible() -> None:
    bundles = list(generate(11, 3000, AS_OF))
    orders_db_rows = [b.rows["orders_db"] for b in bundles]
    orders = [len(r.get("orders", [])) for r in orders_db_rows]
    assert 0.75 < sum(1 for n in orders if n) / len(orders) < 0.88
    assert 1.8 < statistics.mean(orders) < 3.5 and max(orders) <= 60
    pros = [
        len(r.get("orders", []))
        for b, r in zip(bundles, orders_db_rows, strict=True)
        if b.person.classification == "professional"
    ]
    assert statistics.mean(pros) > statistics.mean(orders)
    for b in bundles[:500]:
        for invoice in b.rows["orders_db"].get("invoices", []):
            delay = (invoice["due_on"] - invoice["issued_on"]).days
            assert delay == (0 if b.person.classification == "individual" else 30)
            assert invoice["issued_on"] <= AS_OF.date()
        for order in b.rows["orders_db"].get("orders", []):
            assert AS_OF - timedelta(days=6 * 366) < order["placed_at"] <= AS_OF
    share = {
        system: sum(1 for b in bundles if b.rows.get(system)) / len(bundles)
        for system in ("loyalty", "newsletter", "contact_forms")
    }
    assert 0.5 < share["loyalty"] < 0.6 and 0.3 < share["newsletter"] < 0.4 and 0.09 < share["contact_forms"] < 0.15
    assert 0.04 < sum(1 for b in bundles if b.recordings) / len(bundles) < 0.08
    messy = [m["email"] for b in bundles for m in b.rows.get("contact_forms", {}).get("contact_messages", [])]
    assert any(e != e.strip().lower() for e in messy), "contact-form emails are typed with case and spaces"


def test_the_spec_subject_is_in_every_system() -> None:
    demo = bundle(42, DEMO_INDEX, AS_OF)
    assert demo.person.customer_id == "C-100234" and demo.person.email == "marie.dupont@example.fr"
    assert set(demo.rows) == {"orders_db", "loyalty", "newsletter", "contact_forms"} and demo.recordings
    ids = {(r["kind"], r["value"]) for r in demo.rows["orders_db"]["customer_identifiers"]}
    assert ids == {("ga_client_id", "123.456"), ("facebook_user_id", "10229"), ("shopimind_customer_id", "88")}


def test_seeded_systems_are_found_by_every_connector(tmp_path: Path, s3_client: Any, s3_bucket: str) -> None:
    urls = {
        system: f"sqlite:///{tmp_path / f'{system}.db'}"
        for system in ("orders_db", "loyalty", "newsletter", "contact_forms")
    }
    report = seed_systems(urls, customers=300, seed=42, as_of=AS_OF, batch_rows=1000, s3=s3_client, bucket=s3_bucket)
    assert report.rows["orders_db"]["customers"] == 300 and report.recordings > 0
    assert report.total_rows == sum(sum(t.values()) for t in report.rows.values())

    connectors = {
        "orders_db": orders_db.create("orders_db", {"url": urls["orders_db"]}, context()),
        "loyalty": loyalty.create("loyalty", {"url": urls["loyalty"]}, context()),
        "newsletter": newsletter.create(
            "newsletter", {"url": urls["newsletter"], "suppression_key": "k" * 32}, context()
        ),
        "contact_forms": contact_forms.create("contact_forms", {"url": urls["contact_forms"]}, context()),
        "call_recordings": call_recordings.create(
            "call_recordings",
            {
                "bucket": s3_bucket,
                "endpoint_url": services.S3_ENDPOINT,
                "access_key_id": "testing",
                "secret_access_key": "testing",
            },
            context(),
        ),
    }
    for system, connector in connectors.items():
        result = connector.export(SPEC_SUBJECT, MemoryExportWriter())
        assert result.outcome == "exported" and result.records > 0, system
    erased = {system: c.erase(SPEC_SUBJECT).outcome for system, c in connectors.items()}
    assert erased == {
        "orders_db": "retained",
        "loyalty": "erased",
        "newsletter": "erased",
        "contact_forms": "erased",
        "call_recordings": "erased",
    }
    for connector in connectors.values():
        connector.close()


@pytest.mark.postgres
def test_seeding_postgres_leaves_sequences_usable(pg_url: str) -> None:
    report = seed_systems({"orders_db": pg_url, "newsletter": pg_url}, customers=50, seed=1, as_of=AS_OF)
    assert report.rows["orders_db"]["customers"] == 50
    engine = sa.create_engine(pg_url, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:  # an application insert without an explicit id must not collide
        conn.execute(
            sa.text(
                "INSERT INTO consents (customer_id, purpose, granted, recorded_at, source) "
                "VALUES ('C-100000', 'profiling', false, now(), 'account')"
            )
        )
    engine.dispose()


def _seed_cli(directory: Path, *extra: str) -> dict[str, Any]:
    run = subprocess.run(  # noqa: S603 - our own script
        [sys.executable, str(ROOT / "scripts" / "seed.py"), "--sqlite-dir", str(directory),
         "--customers", "120", "--as-of", "2026-11-25", "--json", *extra],
        capture_output=True, text=True, timeout=120, check=True,
    )
    summary: dict[str, Any] = json.loads(run.stdout)
    return summary


def test_seed_cli_writes_sqlite_files(tmp_path: Path) -> None:
    summary = _seed_cli(tmp_path)
    assert summary["customers"] == 120 and summary["rows"]["orders_db"]["customers"] == 120
    assert sorted(p.name for p in tmp_path.glob("*.db")) == [
        "contact_forms.db",
        "loyalty.db",
        "newsletter.db",
        "orders_db.db",
    ]
    again = _seed_cli(tmp_path, "--reset")
    assert again["rows"] == summary["rows"]
