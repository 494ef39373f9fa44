"""Verification from the declarative SQL rules, the scan's sightings, tombstones and the _verify step,
on SQLite: no service needed."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from connectors import loyalty, orders_db
from connectors.sql import SqlConnector
from devkit.shop_schemas import loyalty as loyalty_schema
from devkit.shop_schemas import orders as orders_schema
from tests import verification_fakes
from worker import states
from worker.config import Topics
from worker.core.connector import ConnectorContext, IdentifierSource, Sighting, Subject, Verifier
from worker.core.identifiers import keyed_hash
from worker.receipts import VERIFY_TASK
from worker.store import db
from worker.store.repository import Store
from worker.store.verification import VerificationStore
from worker.verification.scan import Scan
from worker.verification.step import VerificationStep, tombstone_hashes

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
KEY = b"tombstone-key-0123456789"


def context() -> ConnectorContext:
    return ConnectorContext(now=lambda: NOW)


def subject(customer_id: str = "C-1", request_id: str = "r-1") -> Subject:
    return Subject(request_id=request_id, subject_ref="hmac-sha256:ref", customer_id=customer_id,
                   emails=(f" Marie.{customer_id}@Example.FR ",), phones=("+33612345678",),
                   identifiers={"ga_client_id": ("123.456",)})


def loyalty_db(tmp_path: Path, customers: tuple[str, ...] = ("C-1", "C-2")) -> str:
    url = f"sqlite:///{tmp_path / 'loyalty.db'}"
    engine = sa.create_engine(url)
    loyalty_schema.metadata.create_all(engine)
    with engine.begin() as conn:
        for n, customer in enumerate(customers):
            conn.execute(_row(loyalty_schema.loyalty_accounts, customer_id=customer, card_number=f"card-{n}"))
            conn.execute(_row(loyalty_schema.loyalty_history, customer_id=customer))
            conn.execute(_row(loyalty_schema.promo_codes, code=f"P{n}", customer_id=customer))
    engine.dispose()
    return url


def test_sql_verification_follows_the_declared_rules(tmp_path: Path) -> None:
    url = loyalty_db(tmp_path)
    forgetful = verification_fakes.create("loyalty", {"url": url}, context())
    assert isinstance(forgetful, Verifier) and isinstance(forgetful, IdentifierSource)
    assert forgetful.erase(subject()).outcome == "erased"  # says erased, but left the promo code
    left = {r.table: r.count for r in forgetful.verify(subject())}
    assert left == {"loyalty_accounts": 0, "loyalty_history": 0, "promo_codes": 1}
    honest = loyalty.create("loyalty", {"url": url}, context())
    honest.erase(subject())
    assert all(r.count == 0 for r in honest.verify(subject()))
    assert {r.count for r in honest.verify(subject("C-2"))} == {1}  # the other customer is untouched
    forgetful.close()
    honest.close()


def test_retained_invoices_are_not_residue_but_their_nulled_columns_are(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'orders.db'}"
    engine = sa.create_engine(url)
    orders_schema.metadata.create_all(engine)
    invoices = orders_schema.metadata.tables["invoices"]
    with engine.begin() as conn:
        conn.execute(_row(orders_schema.metadata.tables["customers"], customer_id="C-1", email="marie@example.fr"))
        conn.execute(_row(invoices, customer_id="C-1", due_on=date(2026, 11, 1), email="marie@example.fr"))
    connector: SqlConnector = orders_db.create("orders_db", {"url": url}, context())
    assert connector.erase(subject()).outcome == "retained"
    assert all(r.count == 0 for r in connector.verify(subject()))
    with engine.begin() as conn:  # a bad backup puts the contact details back on the kept invoice
        conn.execute(invoices.update().values(email="marie@example.fr"))
    assert {r.table: r.count for r in connector.verify(subject()) if r.count} == {"invoices": 1}
    # The scan never reads retained tables: a kept invoice is no resurrection.
    assert {s.table for s in connector.sightings()} == set()
    connector.close()
    engine.dispose()


def _row(table: sa.Table, **values: Any) -> Any:
    """An INSERT of ``values``, every other required column filled with a placeholder."""
    required = {c.name: _filler(c) for c in table.columns
                if not c.nullable and c.autoincrement is not True and c.name not in values}
    return table.insert().values({**required, **values})


def _filler(column: sa.Column[Any]) -> Any:
    python_type = column.type.python_type
    return {str: "x", int: 1, date: date(2026, 1, 1), datetime: NOW}.get(python_type, 1)


def test_tombstones_share_the_suppression_lists_hash() -> None:
    from connectors.sql import suppression_hash

    email = " Marie.Dupont@Example.FR"
    assert suppression_hash(KEY, email) == keyed_hash(KEY, "email", "marie.dupont@example.fr")
    hashes = tombstone_hashes(KEY, subject())
    assert {kind for kind, _ in hashes} == {"customer_id", "email", "phone", "ga_client_id"}
    assert all(digest.startswith("hmac-sha256:") and "C-1" not in digest for _, digest in hashes)


def _store(tmp_path: Path) -> tuple[Store, VerificationStore]:
    engine = db.create_engine(f"sqlite:///{tmp_path / 'store.db'}")
    db.migrate(engine)
    args: dict[str, Any] = {"topics": Topics(), "policy": states.RetryPolicy(), "actor": "test"}
    return Store(engine, **args), VerificationStore(engine, **args)


def _run_verify(tmp_path: Path, connector: SqlConnector,
                others: dict[str, Any] | None = None) -> tuple[Store, VerificationStore, str]:
    from devkit.pipeline import record

    store, vstore = _store(tmp_path)
    request_id = record(store, {"loyalty": 3, VERIFY_TASK: 3}, customer_id="C-1", emails=["marie.c-1@example.fr"],
                        phones=["+33612345678"], now=NOW)
    loyalty_claim = store.claim_due(now=NOW, lease_until=NOW + timedelta(seconds=30), limits={"loyalty": 1,
                                    VERIFY_TASK: 1}, room=4)
    assert [t.system for t in loyalty_claim] == ["loyalty"]  # _verify waits for every real system
    task = loyalty_claim[0]
    store.finish(task, states.Confirm(connector.erase(task.subject).outcome), _update(), NOW)
    claimed = store.claim_due(now=NOW, lease_until=NOW + timedelta(seconds=30), limits={VERIFY_TASK: 1}, room=4)
    assert [t.system for t in claimed] == [VERIFY_TASK]
    step = VerificationStep(vstore, {"loyalty": connector, **(others or {})}, clock=lambda: NOW, tombstone_key=KEY,
                            tombstone_days=30)
    (outcome,) = step.run_many(claimed)
    assert not isinstance(outcome, Exception)
    store.finish(claimed[0], *outcome, NOW)
    return store, vstore, request_id


def _update() -> Any:
    from worker.store.records import TaskUpdate

    return TaskUpdate()


def test_a_failed_verification_reopens_the_system_and_needs_a_person(tmp_path: Path) -> None:
    connector = verification_fakes.create("loyalty", {"url": loyalty_db(tmp_path)}, context())
    store, vstore, request_id = _run_verify(tmp_path, connector)
    request, rows, events = store.get(request_id)
    assert request["status"] == "action_required"
    loyalty_row = next(r for r in rows if r["system"] == "loyalty")
    assert (loyalty_row["state"], loyalty_row["error_code"]) == ("failed", "verification_failed")
    assert "promo_codes 1" in loyalty_row["error_message"]
    failed = [e for e in events if e["action"] == "verification_failed"]
    assert failed and failed[0]["detail"] == "promo_codes 1"
    assert vstore.tombstone_count(NOW) == 0  # nothing is tombstoned until the erasure holds
    receipt = store.receipt(request_id)
    assert receipt["systems"][0]["error"]["code"] == "verification_failed"
    # A person fixes the connector and retries: the erasure and its verification run again.
    store.operator_retry(request_id, None, actor="ops", now=NOW)
    assert {r["system"]: r["state"] for r in store.get(request_id)[1]} == {"loyalty": "pending", VERIFY_TASK: "pending"}
    connector.close()


def test_a_clean_verification_is_audited_and_lays_tombstones(tmp_path: Path) -> None:
    connector = loyalty.create("loyalty", {"url": loyalty_db(tmp_path)}, context())
    store, vstore, request_id = _run_verify(tmp_path, connector)
    request, _, events = store.get(request_id)
    assert request["status"] == "completed"
    verified = [e for e in events if e["action"] == "verified"]
    assert [(e["system"], e["detail"]) for e in verified] == [
        ("loyalty", "loyalty_accounts 0, loyalty_history 0, promo_codes 0")]
    assert vstore.tombstone_count(NOW) == 3  # customer id, email, phone
    assert vstore.tombstone_count(NOW + timedelta(days=31)) == 0
    assert vstore.purge_tombstones(NOW + timedelta(days=31)) == 3
    connector.close()


class _Publisher:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def publish(self, command: Any, done: Any) -> None:
        self.sent.append(dict(command))
        done(True)

    def flush(self) -> int:
        return 0


def test_the_scan_finds_a_restored_subject_once_and_links_the_new_erasure(tmp_path: Path) -> None:
    url = loyalty_db(tmp_path)
    connector = loyalty.create("loyalty", {"url": url}, context())
    store, vstore, request_id = _run_verify(tmp_path, connector)
    scan = Scan(vstore, tombstone_key=KEY, subject_key=b"subject-key-0123456789", clock=lambda: NOW, batch=2)
    assert scan.run({"loyalty": connector}, _Publisher()).subjects == 0
    engine = sa.create_engine(url)
    with engine.begin() as conn:  # last week's backup comes back
        conn.execute(_row(loyalty_schema.promo_codes, code="P9", customer_id="C-1"))
    dry = scan.run({"loyalty": connector}, None)
    assert (dry.found, dry.subjects, dry.emitted) == ({("loyalty", "promo_codes"): 1}, 1, 1)
    publisher = _Publisher()
    report = scan.run({"loyalty": connector}, publisher)
    assert report.emitted == 1 and report.scanned == 4  # C-2's three rows and the restored one
    command = publisher.sent[0]
    assert (command["requested_by"], command["priority"], command["systems"]) == ("resurrection-scan",
                                                                                  "background", None)
    assert command["subject"]["customer_id"] == "C-1"
    assert request_id in command["reason"]
    events = store.get(request_id)[2]
    assert [e["detail"].split(":")[0] for e in events if e["action"] == "resurrected_as"] == [command["request_id"]]
    again = _Publisher()
    second = scan.run({"loyalty": connector}, again)  # the new erasure is not recorded yet: nothing new
    assert (second.subjects, second.skipped, again.sent) == (1, 1, [])
    assert "C-1" not in repr(report.as_dict())
    connector.close()
    engine.dispose()


def test_an_erasure_of_fewer_than_every_system_is_verified_but_lays_no_tombstones(tmp_path: Path) -> None:
    connector = loyalty.create("loyalty", {"url": loyalty_db(tmp_path)}, context())
    # contact_forms is configured, but this request (the sweeper's, say) did not target it.
    store, vstore, request_id = _run_verify(tmp_path, connector, others={"contact_forms": connector})
    request, _, events = store.get(request_id)
    assert request["status"] == "completed"
    assert [e["system"] for e in events if e["action"] == "verified"] == ["loyalty"]
    assert vstore.tombstone_count(NOW) == 0
    connector.close()


class _EveryoneErased:
    """A store whose tombstones match every identifier: one erased subject per (kind, value) seen."""

    def __init__(self) -> None:
        self.linked: list[str] = []

    def purge_tombstones(self, now: datetime) -> int:
        return 0

    def tombstone_count(self, now: datetime) -> int:
        return 1

    def matches(self, hashes: Any, now: datetime) -> dict[tuple[str, str], Any]:
        from worker.store.verification import Tombstone

        return {pair: Tombstone(request_id=f"r-{pair[1][-8:]}", subject_ref=None) for pair in hashes}

    def resurrections(self, originals: Any) -> dict[str, tuple[int, bool]]:
        return {}

    def link_resurrection(self, original: str, new_request_id: str, where: str, now: datetime) -> None:
        self.linked.append(new_request_id)

    def record_scan(self, counts: Any) -> None:
        pass


class _Rows:
    def __init__(self, *rows: tuple[tuple[str, str], ...]) -> None:
        self.rows = rows

    def sightings(self) -> Any:
        return (Sighting("customers", row) for row in self.rows)


def test_the_scan_leaves_out_values_no_command_can_carry_and_counts_subjects_it_cannot_name() -> None:
    from worker import messages

    store = _EveryoneErased()
    scan = Scan(store, tombstone_key=KEY, subject_key=b"subject-key-0123456789", clock=lambda: NOW)  # type: ignore[arg-type]
    source = _Rows(
        (("customer_id", "H-6\x7f"),),  # a customer id the schema refuses, and nothing else: nobody to name
        (("email", " h20\x01@x.fr "),),  # an email with a control character: likewise
        (("email", "ok.one@example.fr "),),  # fine once trimmed
        (("phone", "+33611111111"),),
    )
    publisher = _Publisher()
    report = scan.run({"crm": source}, publisher)  # type: ignore[dict-item]
    assert (report.subjects, report.emitted, report.failed, report.invalid) == (4, 2, 0, 2)
    assert report.dropped_identifiers == 2
    assert not report.ok  # a person must look at the two: the exit code says so
    assert len(publisher.sent) == 2 == len(store.linked)
    for command in publisher.sent:  # every command the scan publishes is one the worker accepts
        assert messages.schema_errors("command.v1", command) == []
    assert sorted(e for c in publisher.sent for e in c["subject"].get("emails", [])) == ["ok.one@example.fr"]
    shown = repr(report.as_dict())
    assert "H-6" not in shown and "h20" not in shown and "ok.one" not in shown


def test_an_erasure_is_verified_by_default_once_a_system_can_check(tmp_path: Path) -> None:
    """SPEC §3.13: an internal system's erasure is verified before ``completed`` is published. It was so only when
    the config said ``verification.enabled: true`` (the chart did; a worker run from a plain config did not), so
    a ``completed`` receipt could stand for an erasure nobody checked. A config of systems none of which can check
    (vendors, fakes) gives erasures no ``_verify`` step: there would be nothing to verify."""
    from devkit.pipeline import SUBJECT_KEY
    from worker import compose, config

    def intake_verifies(systems: dict[str, Any], **extra: Any) -> bool:
        settings = config.build({"store_url": f"sqlite:///{tmp_path / f'oubli-{len(systems)}-{len(extra)}.db'}",
                                 "subject_key": SUBJECT_KEY, "kafka": {"bootstrap_servers": "127.0.0.1:1"},
                                 "systems": systems, **extra}, env={})
        parts = compose.build(settings, migrate=True, producer_factory=lambda _config: None)  # type: ignore[arg-type,return-value]
        try:
            return parts.intake.verify_enabled
        finally:
            parts.close()

    fake = {"connector": "devkit.fakes", "settings": {"url": f"sqlite:///{tmp_path / 'effects.db'}"}}
    loyalty = {"connector": "loyalty", "settings": {"url": loyalty_db(tmp_path)}}
    assert config.build({"subject_key": SUBJECT_KEY, "systems": {"alpha": fake}}, env={}).verification.enabled
    assert intake_verifies({"alpha": fake, "loyalty": loyalty})
    assert not intake_verifies({"alpha": fake})
    assert not intake_verifies({"alpha": fake, "loyalty": loyalty}, verification={"enabled": False})
