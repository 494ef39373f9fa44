"""An ``action_required`` receipt says why, even when what failed is an internal step (the subject's vendor
ids, the export package), which has no entry of its own among the receipt's systems."""

from __future__ import annotations

from devkit.pipeline import Receipts, raw_settings, settings_from, subject_command
from worker.app import Worker
from worker.support import publish_command


def test_a_failed_internal_step_is_the_action_required_receipts_error(pg_url: str, kafka_bootstrap: str) -> None:
    # The identity store's tables are missing (a schema not set up yet): the _identity step, which reads the
    # subject's vendor ids before any system runs, fails; no system does.
    systems = {"alpha": {"connector": "devkit.fakes", "settings": {"url": pg_url}},
               "orders_db": {"connector": "orders_db", "settings": {"url": pg_url}}}
    raw = raw_settings(store_url=pg_url, bootstrap=kafka_bootstrap, systems=systems, identity_system="orders_db")
    settings = settings_from(raw)
    worker = Worker(settings, migrate=True, serve_http=False)
    worker.start()
    receipts = Receipts(settings)
    try:
        command = subject_command("erasure", systems=["alpha"])
        publish_command(settings.kafka, command)
        receipt = receipts.wait(command["request_id"], {"action_required", "completed"}, step=worker.run_once,
                                timeout=90)
    finally:
        receipts.close()
        worker.close()
    assert receipt["status"] == "action_required"
    assert [s["state"] for s in receipt["systems"]] == ["pending"]  # no system failed...
    assert receipt["error"] is not None, "an action_required receipt that names no failure"  # ...so it says what did
    assert receipt["error"]["code"]
    assert "vendor ids" in receipt["error"]["message"], receipt["error"]
    assert command["subject"]["customer_id"] not in receipt["error"]["message"]


def test_a_long_detail_or_error_from_a_connector_is_cut_to_what_the_receipt_and_the_store_hold(db_url: str) -> None:
    """A connector's detail (500 characters in receipt.v1 and the tasks table) and error message (1000) were
    written as they came: PostgreSQL refused the whole batch of results (value too long), so the calls' results
    were never recorded, and SQLite kept them and published a receipt that breaks receipt.v1."""
    from datetime import timedelta

    from devkit.pipeline import record
    from worker import messages, states
    from worker.config import Topics
    from worker.store import db
    from worker.store.repository import Store, TaskUpdate

    engine = db.create_engine(db_url)
    db.migrate(engine)
    store = Store(engine, topics=Topics(), policy=states.RetryPolicy(), actor="test")
    request_id = record(store, {"alpha": 1, "beta": 1}, customer_id="C-long")
    now = store.get(request_id)[0]["created_at"]
    claimed = store.claim_due(now=now, lease_until=now + timedelta(minutes=5), limits={"alpha": 9, "beta": 9}, room=9)
    results = {"alpha": (states.Confirm("erased"), TaskUpdate(detail="d" * 700)),
               "beta": (states.Fail("vendor_rejected", "m" * 1500, retryable=False), TaskUpdate())}
    finished = store.finish_many([(task, *results[task.system]) for task in claimed], now)
    assert all(f is not None for f in finished)
    receipt = store.receipt(request_id)
    assert messages.schema_errors("receipt.v1", receipt) == []
    by_system = {s["system"]: s for s in receipt["systems"]}
    assert by_system["alpha"]["detail"] == "d" * 500 and by_system["beta"]["error"]["message"] == "m" * 1000
    engine.dispose()


def test_a_long_retained_category_or_legal_basis_is_cut_to_what_the_receipt_holds(db_url: str) -> None:
    """receipt.v1 bounds a retained entry's category (64) and legal_basis (200). A connector's own words (a plug-in,
    or a ``connector: sql`` rule whose config spells the basis out) were written as they came, and the receipt
    published for the request broke its closed schema."""
    from datetime import timedelta

    from devkit.pipeline import record
    from worker import messages, states
    from worker.config import Topics
    from worker.store import db
    from worker.store.repository import Store, TaskUpdate

    engine = db.create_engine(db_url)
    db.migrate(engine)
    store = Store(engine, topics=Topics(), policy=states.RetryPolicy(), actor="test")
    request_id = record(store, {"alpha": 1}, customer_id="C-retained")
    now = store.get(request_id)[0]["created_at"]
    claimed = store.claim_due(now=now, lease_until=now + timedelta(minutes=5), limits={"alpha": 9}, room=9)
    retained = [{"category": "c" * 100, "legal_basis": "b" * 300, "until": "2029-03-31"}]
    finished = store.finish_many([(task, states.Confirm("retained"), TaskUpdate(retained=retained))
                                  for task in claimed], now)
    assert all(f is not None for f in finished)
    receipt = store.receipt(request_id)
    assert messages.schema_errors("receipt.v1", receipt) == []
    assert receipt["systems"][0]["retained"] == [{"category": "c" * 64, "legal_basis": "b" * 200,
                                                  "until": "2029-03-31"}]
    engine.dispose()
