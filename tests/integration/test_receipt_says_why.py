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
