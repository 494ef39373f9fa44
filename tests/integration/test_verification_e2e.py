"""Verified, and kept gone, end to end on Kafka, PostgreSQL and S3 with the sample shop.

* A connector that says ``erased`` but leaves a row: the request turns ``action_required`` with
  ``verification_failed`` on that system (table and count), never ``completed``.
* An erased customer restored into ``orders_db`` and ``newsletter`` from a backup: ``oubli verify``
  finds them (by system and table, counts only), erases them again, and the second request links to
  the first; a second scan then finds nothing.
* Neither leaves personal data in logs, receipts, metrics, the audit trail or the scan's output.
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from click.testing import CliRunner
from prometheus_client import generate_latest

from devkit import allsystems, services
from devkit.pipeline import Receipts, raw_settings, settings_from
from worker import logs, metrics
from worker.app import Worker
from worker.cli import cli
from worker.config import Settings
from worker.core.timefmt import utcnow
from worker.store.schema import audit_events, tombstones
from worker.support import build_command, publish_command

TOMBSTONE_KEY = "tombstone-key-0123456789abcdef"


@dataclass
class Shop:
    settings: Settings
    raw: dict[str, Any]
    sql_urls: dict[str, str]
    subject: allsystems.DemoSubject
    worker: Worker
    receipts: Receipts
    logs: io.StringIO
    config: Path

    def erase(self, timeout: float = 120) -> dict[str, Any]:
        command = build_command(kind="erasure", requested_by="account-service", customer_id=self.subject.customer_id,
                                emails=[self.subject.email], phones=[self.subject.phone])
        publish_command(self.settings.kafka, command)
        return self.receipts.wait(command["request_id"], {"completed", "action_required"}, step=self.worker.run_once,
                                  timeout=timeout)

    def personal(self) -> list[str]:
        return [self.subject.email, self.subject.phone, self.subject.customer_id]

    def assert_no_personal_data(self, *texts: str) -> None:
        audit = sa.create_engine(self.settings.store_url, poolclass=sa.pool.NullPool)
        with audit.connect() as conn:
            trail = repr(conn.execute(sa.select(audit_events)).all())
            kept = repr(conn.execute(sa.select(tombstones)).all())
        audit.dispose()
        everything = {"logs": self.logs.getvalue(), "receipts": "\n".join(r.decode() for r in self.receipts.raw),
                      "metrics": generate_latest(metrics.REGISTRY).decode(), "audit": trail, "tombstones": kept,
                      **{f"output {n}": t for n, t in enumerate(texts)}}
        for value in self.personal():
            token = re.compile(rf"(?<![0-9A-Za-z.]){re.escape(value)}(?![0-9A-Za-z.])", re.I)
            for where, text in everything.items():
                assert not token.search(text), f"personal data in the {where}"


@pytest.fixture
def shop(request: pytest.FixtureRequest, pg_url: str, pg_schema_urls: Any, kafka_bootstrap: str, s3_client: Any,
         s3_bucket: str, tmp_path: Path) -> Iterator[Shop]:
    loyalty_connector = getattr(request, "param", "loyalty")
    as_of = utcnow()
    sql_urls = {system: pg_schema_urls() for system in allsystems.INTERNAL_SQL}
    allsystems.seed(sql_urls, s3_client, s3_bucket, as_of, customers=240)
    subject = allsystems.demo_subject(as_of)
    systems = {
        "orders_db": {"connector": "orders_db", "settings": {"url": sql_urls["orders_db"]}},
        "loyalty": {"connector": loyalty_connector, "settings": {"url": sql_urls["loyalty"]}},
        "newsletter": {"connector": "newsletter", "settings": {"url": sql_urls["newsletter"],
                                                               "suppression_key": "local-suppression-key"}},
        "contact_forms": {"connector": "contact_forms", "settings": {"url": sql_urls["contact_forms"]}},
        "call_recordings": {"connector": "call_recordings", "settings": {
            "bucket": s3_bucket, "endpoint_url": services.S3_ENDPOINT, "access_key_id": "testing",
            "secret_access_key": "testing"}},
    }
    raw = raw_settings(store_url=pg_url, bootstrap=kafka_bootstrap, systems=systems,
                       verification={"enabled": True, "tombstone_key": TOMBSTONE_KEY, "scan_batch": 100})
    settings = settings_from(raw)
    config = tmp_path / "oubli.yaml"
    config.write_text(yaml.safe_dump(raw))
    stream = io.StringIO()
    logs.configure(level="DEBUG", stream=stream)
    logging.getLogger().setLevel(logging.DEBUG)
    worker = Worker(settings, migrate=True, serve_http=False)
    worker.start()
    receipts = Receipts(settings)
    try:
        yield Shop(settings, raw, sql_urls, subject, worker, receipts, stream, config)
    finally:
        receipts.close()
        worker.close()


@pytest.mark.parametrize("shop", ["tests.verification_fakes"], indirect=True)
def test_an_incomplete_erasure_is_never_completed(shop: Shop) -> None:
    loyalty = sa.create_engine(shop.sql_urls["loyalty"], poolclass=sa.pool.NullPool)
    with loyalty.begin() as conn:  # the row the forgetful connector will leave behind
        conn.execute(sa.text("INSERT INTO promo_codes (code, customer_id, kind, issued_at, expires_on) "
                             "VALUES ('LEFT-1', :c, 'goodwill', now(), current_date + 30)"),
                     {"c": shop.subject.customer_id})
        left = conn.execute(sa.text("SELECT count(*) FROM promo_codes WHERE customer_id = :c"),
                            {"c": shop.subject.customer_id}).scalar_one()
    loyalty.dispose()

    receipt = shop.erase()

    assert receipt["status"] == "action_required", json.dumps(receipt, indent=1)
    assert not [r for r in shop.receipts.of(receipt["request_id"]) if r["status"] == "completed"]
    systems = {s["system"]: s for s in receipt["systems"]}
    assert systems["loyalty"]["state"] == "failed"
    assert systems["loyalty"]["error"]["code"] == "verification_failed"
    assert f"promo_codes {left}" in systems["loyalty"]["error"]["message"]
    assert all(s["state"] == "confirmed" for name, s in systems.items() if name != "loyalty")
    _, _, events = shop.worker.store.get(receipt["request_id"])
    failed = [e for e in events if e["action"] == "verification_failed"]
    assert [(e["system"], e["error_code"], e["detail"]) for e in failed] == [
        ("loyalty", "verification_failed", f"promo_codes {left}")]
    status = _oubli(shop, "status", receipt["request_id"])
    assert f"residue   loyalty: promo_codes {left}" in status
    shop.assert_no_personal_data(status)


def test_a_restored_customer_is_found_erased_again_and_linked(shop: Shop) -> None:
    backup = _backup(shop)
    first = shop.erase()
    assert first["status"] == "completed", json.dumps(first, indent=1)
    _, _, events = shop.worker.store.get(first["request_id"])
    verified = {e["system"]: e["detail"] for e in events if e["action"] == "verified"}
    assert set(verified) == set(allsystems.INTERNAL_SQL) | {"call_recordings"}
    assert verified["loyalty"] == "loyalty_accounts 0, loyalty_history 0, promo_codes 0"
    assert any(e["action"] == "tombstoned" for e in events)

    _restore(shop, backup)  # last week's backups of the orders database and of the newsletter come back

    dry = _oubli(shop, "verify", "--dry-run", "--json")
    counted = json.loads(dry)
    found = {(f["system"], f["table"]): f["rows"] for f in counted["found"]}
    assert found == {("orders_db", "customers"): 1, ("newsletter", "subscribers"): len(backup["subscribers"])}
    assert (counted["subjects"], counted["emitted"], counted["dry_run"]) == (1, 1, True)

    sent = _oubli(shop, "verify")
    assert "erasures sent: 1" in sent
    links = [e for e in shop.worker.store.get(first["request_id"])[2] if e["action"] == "resurrected_as"]
    assert len(links) == 1
    second_id = links[0]["detail"].split(":")[0]
    second = shop.receipts.wait(second_id, {"completed", "action_required"}, step=shop.worker.run_once, timeout=120)
    assert second["status"] == "completed", json.dumps(second, indent=1)
    assert second["subject_ref"] == first["subject_ref"]  # the receipts name the same subject
    request, _, trail = shop.worker.store.get(second_id)
    assert (request["requested_by"], request["priority"]) == ("resurrection-scan", "background")
    assert [e["detail"].split(":")[0] for e in trail if e["action"] == "resurrection_of"] == [first["request_id"]]
    status = _oubli(shop, "status", second_id)
    assert f"resurrection of {first['request_id']}" in status

    again = json.loads(_oubli(shop, "verify", "--json"))
    assert (again["found"], again["subjects"], again["emitted"]) == ([], 0, 0)
    assert _holds(shop) == 0
    shop.assert_no_personal_data(dry, sent, status, json.dumps(again))


def _oubli(shop: Shop, *args: str) -> str:
    """``oubli --config <the shop's config> ARGS`` through click's runner; its standard output. What it
    logged (on stderr) joins the worker's logs, which are checked for personal data."""
    result = CliRunner().invoke(cli, ["--config", str(shop.config), *args], catch_exceptions=False)
    logs.configure(level="DEBUG", stream=shop.logs)  # the command configured logging for itself
    shop.logs.write(result.stderr)
    assert result.exit_code == 0, result.output
    return result.stdout


def _backup(shop: Shop) -> dict[str, list[dict[str, Any]]]:
    customer = shop.subject.customer_id
    orders = sa.create_engine(shop.sql_urls["orders_db"], poolclass=sa.pool.NullPool)
    newsletter = sa.create_engine(shop.sql_urls["newsletter"], poolclass=sa.pool.NullPool)
    with orders.connect() as conn:
        customers = [dict(r) for r in conn.execute(sa.text("SELECT * FROM customers WHERE customer_id = :c"),
                                                   {"c": customer}).mappings()]
    with newsletter.connect() as conn:
        subscribers = [dict(r) for r in conn.execute(
            sa.text("SELECT * FROM subscribers WHERE customer_id = :c OR lower(email) = lower(:e)"),
            {"c": customer, "e": shop.subject.email}).mappings()]
    orders.dispose()
    newsletter.dispose()
    assert customers and subscribers
    return {"customers": customers, "subscribers": subscribers}


def _restore(shop: Shop, backup: dict[str, list[dict[str, Any]]]) -> None:
    for system, table in (("orders_db", "customers"), ("newsletter", "subscribers")):
        engine = sa.create_engine(shop.sql_urls[system], poolclass=sa.pool.NullPool)
        target = sa.Table(table, sa.MetaData(), autoload_with=engine)
        with engine.begin() as conn:
            conn.execute(target.insert(), backup[table])
        engine.dispose()


def _holds(shop: Shop) -> int:
    total = 0
    for system, sql in (("orders_db", "SELECT count(*) FROM customers WHERE customer_id = :c"),
                        ("newsletter", "SELECT count(*) FROM subscribers WHERE customer_id = :c")):
        engine = sa.create_engine(shop.sql_urls[system], poolclass=sa.pool.NullPool)
        with engine.connect() as conn:
            total += conn.execute(sa.text(sql), {"c": shop.subject.customer_id}).scalar_one()
        engine.dispose()
    return total
