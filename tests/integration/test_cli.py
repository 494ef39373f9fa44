"""The support CLI against the real broker and store: submit, receipt, status, retry, confirm."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner

from devkit.pipeline import LocalStore, Receipts, raw_settings, record, run_until, settings_from
from worker import states
from worker.app import Worker
from worker.cli import cli
from worker.core.timefmt import utcnow
from worker.receipts import PACKAGE_TASK, VERIFY_TASK
from worker.store.repository import TaskUpdate


def test_support_commands_with_human_and_json_output(pg_url: str, kafka_bootstrap: str, tmp_path: Path) -> None:
    systems: dict[str, Any] = {
        "alpha": {"connector": "devkit.fakes", "settings": {"url": pg_url}},
        "beta": {"connector": "devkit.fakes", "settings": {"url": pg_url, "permanent": True}},
    }
    raw = raw_settings(store_url=pg_url, bootstrap=kafka_bootstrap, systems=systems)
    config = tmp_path / "oubli.yaml"
    config.write_text(yaml.safe_dump(raw))
    settings = settings_from(raw)
    runner = CliRunner()

    def oubli(*args: str) -> Any:
        result = runner.invoke(cli, ["--config", str(config), *args], catch_exceptions=False)
        return result

    submitted = oubli("submit", "--kind", "erasure", "--customer-id", "C-cli-1", "--email", "cli@example.fr",
                      "--id", "ga_client_id=1.2", "--json")
    assert submitted.exit_code == 0, submitted.output
    request_id = json.loads(submitted.output)["request_id"]
    bad = oubli("submit", "--kind", "erasure", "--customer-id", "C-cli-2", "--phone", "0612")
    assert bad.exit_code != 0 and "would be rejected" in bad.output
    unknown = oubli("submit", "--kind", "erasure", "--customer-id", "C-cli-3", "--system", "alpha", "--system", "nope")
    assert unknown.exit_code == 2 and "systems[1]: not a system configured here (1 of 2)" in unknown.output

    worker = Worker(settings, migrate=True, serve_http=False)
    worker.start()
    receipts = Receipts(settings)
    try:
        receipts.wait(request_id, {"action_required"}, step=worker.run_once)
        human = oubli("receipt", request_id)
        assert human.exit_code == 0 and "action_required" in human.output and "beta" in human.output
        machine = json.loads(oubli("receipt", request_id, "--json").output)
        assert machine["request_id"] == request_id and machine["status"] == "action_required"

        status = oubli("status", request_id, "--audit")
        assert "permanent" in status.output and "audit:" in status.output
        assert "cli@example.fr" not in status.output and "C-cli-1" not in status.output

        assert "retrying: beta" in oubli("retry", request_id, "--by", "sre").output
        run_until(worker, lambda: worker.store.receipt(request_id)["status"] == "action_required", timeout=30)
        confirmed = oubli("confirm", request_id, "--system", "beta", "--by", "dpo", "--note", "vendor letter")
        assert confirmed.exit_code == 0, confirmed.output
        receipts.wait(request_id, {"completed"}, step=worker.run_once)
        final = json.loads(oubli("status", request_id, "--json").output)
        assert final["status"] == "completed"
        assert {s["system"]: s["outcome"] for s in final["systems"]} == {"alpha": "erased",
                                                                          "beta": "manually_confirmed"}
        again = oubli("confirm", request_id, "--system", "beta", "--by", "dpo", "--note", "twice")
        assert again.exit_code != 0 and "terminal" in again.output
        missing = oubli("receipt", "no-such-request", "--timeout", "5")
        assert missing.exit_code != 0 and "no receipt" in missing.output
    finally:
        receipts.close()
        worker.close()


def test_requests_lists_open_work_earliest_due_first_with_what_holds_it_up(tmp_path: Path) -> None:
    """What an operator answers an "overdue" alert from: no topic, no personal data, just the store."""
    local = LocalStore(tmp_path, ("alpha", "beta"))
    store = local.store
    now = utcnow()
    ids = {}
    for name, due in (("late", now - timedelta(days=2)), ("soon", now + timedelta(days=3)),
                      ("later", now + timedelta(days=20))):
        ids[name] = record(store, {"alpha": 1, "beta": 1}, now=now, customer_id=f"C-list-{name}",
                           emails=[f"{name}@example.fr"], requested_at=due - timedelta(days=30), due_at=due)
    # "soon": alpha confirmed, beta failed for good -> action_required, waiting on beta only.
    for task in store.claim_due(now=now, lease_until=now + timedelta(minutes=5), limits={"alpha": 9, "beta": 9},
                                room=10):
        if task.request_id != ids["soon"]:
            continue
        event = (states.Confirm("erased") if task.system == "alpha"
                 else states.Fail("http_403", "beta answered 403", retryable=False))
        store.finish(task, event, TaskUpdate(), now)

    def oubli(*args: str) -> Any:
        result = local.oubli("requests", *args)
        assert result.exit_code == 0, result.output
        return result.output

    listed = json.loads(oubli("--json"))
    assert listed["total"] == 3
    assert [r["request_id"] for r in listed["requests"]] == [ids["late"], ids["soon"], ids["later"]]
    assert [r["overdue"] for r in listed["requests"]] == [True, False, False]
    soon = listed["requests"][1]
    assert soon["status"] == "action_required"
    assert soon["waiting_on"] == [{"system": "beta", "state": "failed", "attempts": 1, "error_code": "http_403",
                                   "next_attempt_at": None}]

    assert [r["request_id"] for r in json.loads(oubli("--overdue", "--json"))["requests"]] == [ids["late"]]
    assert [r["request_id"] for r in json.loads(oubli("--status", "action_required", "--json"))["requests"]] == [
        ids["soon"]]
    assert json.loads(oubli("--system", "alpha", "--json"))["total"] == 2  # "soon" has alpha confirmed
    limited = json.loads(oubli("--limit", "1", "--json"))
    assert limited["total"] == 3 and len(limited["requests"]) == 1

    human = oubli()
    assert human.index(ids["late"]) < human.index(ids["soon"]) < human.index(ids["later"])
    assert "OVERDUE" in human and "beta (failed, http_403)" in human and "3 of 3 open requests shown" in human
    for output in (human, json.dumps(listed)):
        assert "example.fr" not in output and "C-list-" not in output


def test_help_needs_no_config() -> None:
    """An operator reads ``--help`` before they have a config; only a command that runs loads one."""
    runner = CliRunner(env={"OUBLI_CONFIG": None})
    for name, command in cli.commands.items():
        shown = runner.invoke(cli, [name, "--help"])
        assert shown.exit_code == 0 and "Usage:" in shown.output, (name, shown.output)
        for sub in getattr(command, "commands", {}):
            assert runner.invoke(cli, [name, sub, "--help"]).exit_code == 0, (name, sub)
    refused = runner.invoke(cli, ["status", "some-request"])
    assert refused.exit_code != 0 and "invalid configuration" in refused.output


def test_support_finds_a_customers_requests_by_customer_id_without_printing_it(tmp_path: Path) -> None:
    """The customer knows who they are, not their request id; the id is matched by its keyed hash."""
    local = LocalStore(tmp_path)
    store = local.store
    long_ago = utcnow() - timedelta(days=90)
    export = record(store, {"alpha": 1}, kind="export", customer_id="C-find-me", requested_at=long_ago)
    for task in store.claim_due(now=long_ago, lease_until=long_ago + timedelta(minutes=5), limits={"alpha": 9},
                                room=5):
        store.finish(task, states.Confirm("exported"), TaskUpdate(), long_ago)
    erasure = record(store, {"alpha": 1}, customer_id="C-find-me")
    record(store, {"alpha": 1}, customer_id="C-someone-else")

    found = local.oubli("requests", "--customer-id", "C-find-me", "--json")
    assert found.exit_code == 0, found.output
    listed = json.loads(found.output)
    assert [(r["request_id"], r["status"]) for r in listed["requests"]] == [(erasure, "accepted"),
                                                                          (export, "completed")]
    assert listed["requests"][1]["overdue"] is False  # finished requests are never overdue
    human = local.oubli("requests", "--customer-id", "C-find-me").output
    assert "2 of 2 requests shown" in human and "C-find-me" not in human and "C-find-me" not in found.output
    nobody = local.oubli("requests", "--customer-id", "C-unknown", "--json")
    assert json.loads(nobody.output) == {"requests": [], "total": 0}


def test_requests_shows_an_erasure_waiting_behind_an_earlier_request_of_its_subject(tmp_path: Path) -> None:
    """Invariant 7 holds an erasure until the subject's earlier export ends; the listing says so."""
    local = LocalStore(tmp_path)
    store = local.store
    now = utcnow()
    export = record(store, {"alpha": 1}, kind="export", customer_id="C-queue", requested_at=now - timedelta(days=2))
    erasure = record(store, {"alpha": 1}, customer_id="C-queue", requested_at=now - timedelta(days=1))
    other = record(store, {"alpha": 1}, customer_id="C-alone", requested_at=now - timedelta(days=1))

    listed = json.loads(local.oubli("requests", "--json").output)
    waits = {r["request_id"]: r["waits_for"] for r in listed["requests"]}
    assert waits == {export: None, erasure: export, other: None}
    assert f"behind:     {export}" in local.oubli("requests").output


def test_an_operator_note_is_redacted_and_by_is_a_name_not_an_email_or_phone(tmp_path: Path) -> None:
    """The audit trail is kept indefinitely and confirmed_by goes to the receipts topic: no personal data."""
    local = LocalStore(tmp_path, ("alpha", "beta"))
    request_id = record(local.store, {"alpha": 1, "beta": 1}, customer_id="C-note-1")
    note = "customer jean.martin@gmail.com +33611223344 confirmed by phone"

    for by in ("jean.martin@gmail.com", "+33611223344", "x" * 129, "sre\x1b[31m", "  ", "jean.martin\uff20gmail.com"):
        for args in (("confirm", request_id, "--system", "alpha", "--note", "ok"), ("retry", request_id),
                     ("dlq", "replay", "--code", "unknown_system")):
            refused = local.oubli(*args, "--by", by)
            assert refused.exit_code == 2, (args, by, refused.output)
            assert refused.stderr.startswith("error: ") and "--by" in refused.stderr
            assert "gmail" not in refused.stderr and "33611223344" not in refused.stderr
    too_long = local.oubli("confirm", request_id, "--system", "alpha", "--by", "sre", "--note", "n" * 1001)
    assert too_long.exit_code == 2 and "1000" in too_long.stderr, too_long.output

    confirmed = local.oubli("confirm", request_id, "--system", "alpha", "--by", "sre-jean", "--note", note, "--json")
    assert confirmed.exit_code == 0, confirmed.output
    assert json.loads(confirmed.stdout)["note_redacted"] is True and "gmail" not in confirmed.output
    audit = json.loads(local.oubli("status", request_id, "--json", "--audit").stdout)["audit"]
    (detail,) = [e["detail"] for e in audit if e["action"] == "operatorconfirm"]
    assert detail == "customer [redacted] [redacted] confirmed by phone"
    retried = local.oubli("retry", request_id, "--by", "  sre-jean ")
    assert retried.exit_code == 0, retried.output
    other = record(local.store, {"alpha": 1}, customer_id="C-note-2")
    human = local.oubli("confirm", other, "--system", "alpha", "--by", "dpo", "--note", "called +33 6 11 22 33 44")
    assert human.exit_code == 0 and "note stored with personal data redacted: called [redacted]" in human.stdout
    plain = local.oubli("confirm", request_id, "--system", "beta", "--by", "sre-jean", "--note", "vendor letter")
    assert plain.exit_code == 0 and "redacted" not in plain.output, plain.output


def test_retry_without_by_names_the_operator_from_the_environment_or_the_login(
        tmp_path: Path, monkeypatch: Any) -> None:
    """``oubli retry REQUEST_ID`` as the contract spells it: the audit trail names $OUBLI_OPERATOR, else the login
    name, checked like ``--by``. ``confirm`` keeps ``--by`` required: it is an attestation sent in the receipt."""
    local = LocalStore(tmp_path, ("alpha", "beta"))
    now = utcnow()
    request_id = record(local.store, {"alpha": 1, "beta": 1}, now=now, customer_id="C-retry-by")
    for task in local.store.claim_due(now=now, lease_until=now + timedelta(minutes=5), limits={"alpha": 9, "beta": 9},
                                      room=10):
        local.store.finish(task, states.Fail("http_403", "answered 403", retryable=False), TaskUpdate(), now)

    monkeypatch.setenv("OUBLI_OPERATOR", "jean.martin@gmail.com")  # refused like --by, and not echoed
    refused = local.oubli("retry", request_id)
    assert refused.exit_code == 2 and "--by" in refused.stderr and "gmail" not in refused.output, refused.output

    monkeypatch.setenv("OUBLI_OPERATOR", " sre-night ")
    retried = local.oubli("retry", request_id, "--system", "alpha", "--json")
    assert retried.exit_code == 0, retried.output
    assert json.loads(retried.stdout)["retrying"] == ["alpha"]
    monkeypatch.delenv("OUBLI_OPERATOR")
    monkeypatch.setenv("LOGNAME", "sre-login")
    assert local.oubli("retry", request_id, "--system", "beta").exit_code == 0
    audit = json.loads(local.oubli("status", request_id, "--json", "--audit").stdout)["audit"]
    assert [(e["actor"], e["system"]) for e in audit if e["action"] == "operatorretry"] == [
        ("sre-night", "alpha"), ("sre-login", "beta")]
    unattested = local.oubli("confirm", request_id, "--system", "alpha", "--note", "vendor letter")
    assert unattested.exit_code == 2 and "--by" in unattested.output


def test_an_internal_step_cannot_be_confirmed_by_hand(tmp_path: Path) -> None:
    """``_verify`` and ``_package`` are oubli's own steps, not systems: confirmed by hand, an erasure completed
    without its verification (Invariant 13) and an export completed with no package. ``oubli retry`` reruns them."""
    local = LocalStore(tmp_path)
    erasure = record(local.store, {"alpha": 1, VERIFY_TASK: 1}, customer_id="C-step-1")
    export = record(local.store, {"alpha": 1, PACKAGE_TASK: 1}, kind="export", customer_id="C-step-2")
    for request_id, step in ((erasure, VERIFY_TASK), (export, PACKAGE_TASK)):
        refused = local.oubli("confirm", request_id, "--system", step, "--by", "sre", "--note", "skip it")
        assert refused.exit_code == 1 and "internal step" in refused.stderr, refused.output
        assert local.oubli("confirm", request_id, "--system", "alpha", "--by", "sre", "--note", "ok").exit_code == 0
        status = json.loads(local.oubli("status", request_id, "--json", "--audit").stdout)
        assert status["status"] != "completed"
        assert not [e for e in status["audit"] if e["action"] == "operatorconfirm" and e["system"] == step]


def test_receipt_refuses_a_record_of_the_receipts_topic_that_is_no_receipt(pg_url: str, kafka_bootstrap: str,
                                                                           tmp_path: Path) -> None:
    """Any producer with write access can put a record under a request id in the compacted receipts topic. oubli
    receipt printed whatever JSON it found there (personal data too: receipt.v1 is closed so that none gets in),
    and crashed on a value that is no JSON object."""
    from confluent_kafka import Producer

    from worker import kafka

    raw = raw_settings(store_url=pg_url, bootstrap=kafka_bootstrap, systems={})
    config = tmp_path / "oubli.yaml"
    config.write_text(yaml.safe_dump(raw))
    settings = settings_from(raw)
    producer = Producer(kafka.producer_config(settings.kafka))
    strays = {"r-text": b"not json", "r-list": b'["x"]', "r-bytes": b"\xff\xfe", "r-deep": b"[" * 100_000,
              "r-personal": json.dumps({"schema_version": 1, "request_id": "r-personal", "status": "completed",
                                        "email": "marie.dupont@example.fr", "customer_id": "C-100234"}).encode(),
              "r-other": _receipt_of("someone-else")}
    for request_id, value in strays.items():
        producer.produce(settings.kafka.topics.receipts, key=request_id.encode(), value=value)
    assert producer.flush(30) == 0
    runner = CliRunner()
    for request_id in strays:
        for extra in ((), ("--json",)):
            result = runner.invoke(cli, ["--config", str(config), "receipt", request_id, *extra])
            assert result.exit_code == 1, (request_id, result.output)
            assert "not a receipt.v1" in result.output and "Traceback" not in result.output
            assert "marie" not in result.output and "C-100234" not in result.output
    producer.produce(settings.kafka.topics.receipts, key=b"r-good", value=_receipt_of("r-good"))
    assert producer.flush(30) == 0
    shown = runner.invoke(cli, ["--config", str(config), "receipt", "r-good", "--json"])
    assert shown.exit_code == 0 and json.loads(shown.output)["status"] == "rejected", shown.output


def _receipt_of(request_id: str) -> bytes:
    return json.dumps({"schema_version": 1, "request_id": request_id, "kind": None, "subject_ref": None,
                       "status": "rejected", "requested_at": None, "due_at": None, "updated_at": "2026-11-24T10:00:00Z",
                       "completed_at": "2026-11-24T10:00:00Z", "systems": [], "export": None,
                       "error": {"code": "schema_violation", "message": "x"}}).encode()
