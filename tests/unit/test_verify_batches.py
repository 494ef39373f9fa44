"""The ``_verify`` step over a batch of erasures: the executor hands it a set of requests in one job, and the step
checks them with one store read and one call per system, each request's outcome its own. On SQLite: no service."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from connectors import loyalty
from devkit.pipeline import record
from tests.call_harness import run_to_the_end
from tests.unit.test_verification import KEY, NOW, _store, context, loyalty_db, subject
from worker import states
from worker.core.connector import BatchVerifier, Residue, Subject, Verifier
from worker.core.errors import ConnectorError, NeedsPersonError, RetryableError
from worker.executor import VERIFY_BATCH, Executor, internal_limit
from worker.receipts import VERIFY_TASK
from worker.store.records import ClaimedTask, TaskUpdate
from worker.verification.step import VerificationStep

LEASE = NOW + timedelta(seconds=30)


class Crm:
    """A system that checks one subject at a time (no ``verify_many``) and cannot tell ``C-2`` apart."""

    def __init__(self) -> None:
        self.checked: list[str] = []

    def verify(self, subject: Subject) -> Sequence[Residue]:
        self.checked.append(subject.customer_id)
        if subject.customer_id == "C-2":
            raise NeedsPersonError("crm: the subject matches two accounts", code="ambiguous")
        return [Residue("contacts", 0)]

    def erase(self, subject: Subject) -> Any:
        raise NotImplementedError

    def export(self, subject: Subject, writer: Any) -> Any:
        raise NotImplementedError

    def poll(self, subject: Subject, vendor_ref: str) -> Any:
        raise NotImplementedError

    def close(self) -> None:
        pass


def test_a_batch_is_read_once_and_each_request_gets_its_own_outcome(tmp_path: Path) -> None:
    store, vstore = _store(tmp_path)
    shop = loyalty.create("loyalty", {"url": loyalty_db(tmp_path, ("C-1", "C-2", "C-3"))}, context())
    crm = Crm()
    assert isinstance(shop, BatchVerifier) and isinstance(crm, Verifier) and not isinstance(crm, BatchVerifier)
    ids = {customer: record(store, {"loyalty": 3, "crm": 3, VERIFY_TASK: 3}, customer_id=customer,
                            emails=[f"marie.{customer.lower()}@example.fr"], phones=["+33612345678"], now=NOW)
           for customer in ("C-1", "C-2", "C-3")}
    for task in store.claim_due(now=NOW, lease_until=LEASE, limits={"loyalty": 9, "crm": 9}, room=9):
        # C-3's erasure "confirms" without erasing: its rows are still there for the check to find.
        if task.system == "loyalty" and task.subject.customer_id != "C-3":
            shop.erase(task.subject)
        store.finish(task, states.Confirm("erased"), TaskUpdate(), NOW)
    claimed = store.claim_due(now=NOW, lease_until=LEASE, limits={VERIFY_TASK: 9}, room=9)
    assert sorted(t.subject.customer_id for t in claimed) == ["C-1", "C-2", "C-3"]
    reads: list[Sequence[str]] = []
    read = vstore.task_rows
    vstore.task_rows = lambda request_ids: reads.append(request_ids) or read(request_ids)  # type: ignore[method-assign]
    step = VerificationStep(vstore, {"loyalty": shop, "crm": crm}, clock=lambda: NOW, tombstone_key=KEY)

    outcomes = dict(zip((t.subject.customer_id for t in claimed), step.run_many(claimed), strict=True))

    assert len(reads) == 1 and sorted(reads[0]) == sorted(ids.values())  # one read for the batch
    assert sorted(crm.checked) == ["C-1", "C-2", "C-3"]  # C-3's residue elsewhere does not skip its other checks
    clean = outcomes["C-1"]
    assert not isinstance(clean, ConnectorError)
    assert clean[0] == states.Confirm("verified")
    assert clean[1].verified == {"crm": "contacts 0", "loyalty": "loyalty_accounts 0, loyalty_history 0, promo_codes 0"}
    ambiguous = outcomes["C-2"]
    assert isinstance(ambiguous, NeedsPersonError) and ambiguous.code == "ambiguous"  # its own error, no one else's
    dirty = outcomes["C-3"]
    assert not isinstance(dirty, ConnectorError) and isinstance(dirty[0], states.Fail)
    assert dirty[0].code == "verification_failed" and "loyalty" in dirty[0].message
    reopened = {row["system"]: row["state"] for row in store.get(ids["C-3"])[1]}
    assert reopened["loyalty"] == "failed" and reopened["crm"] == "confirmed"
    assert all(row["state"] != "failed" for row in store.get(ids["C-2"])[1])  # an error reopens nothing
    # Tombstones for the clean erasure only: its customer id, email and phone, with one audit event.
    assert vstore.tombstone_count(NOW) == 3
    tombstoned = {request_id: [e for e in store.get(request_id)[2] if e["action"] == "tombstoned"]
                  for request_id in ids.values()}
    assert [len(events) for events in tombstoned.values()] == [1, 0, 0]
    shop.close()


def test_the_sql_connector_checks_a_batch_as_it_checks_each_subject(tmp_path: Path) -> None:
    shop = loyalty.create("loyalty", {"url": loyalty_db(tmp_path, ("C-1", "C-2", "C-3"))}, context())
    shop.erase(subject("C-2"))
    subjects = [subject("C-1"), subject("C-2"), subject("C-3"), subject("C-9")]
    assert shop.verify_many(subjects) == [shop.verify(s) for s in subjects]
    assert [sum(r.count for r in found) for found in shop.verify_many(subjects)] == [3, 0, 3, 0]  # type: ignore[union-attr]
    shop.close()


class Recorder:
    """The executor's verifier: records each batch it is handed; C-13 checks in error, everyone else is clean."""

    def __init__(self, fail: BaseException | None = None) -> None:
        self.batches: list[list[str]] = []
        self.fail = fail

    def run_many(self, tasks: Sequence[ClaimedTask]) -> list[Any]:
        self.batches.append([t.subject.customer_id for t in tasks])
        if self.fail is not None:
            raise self.fail
        return [RetryableError("crm: timed out", code="crm_timeout") if t.subject.customer_id == "C-13"
                else (states.Confirm("verified"), TaskUpdate(records=0, verified={})) for t in tasks]


def _run(tmp_path: Path, verifier: Recorder, requests: int, max_in_flight: int = 64) -> dict[str, dict[str, Any]]:
    store, _ = _store(tmp_path)
    ids = {record(store, {VERIFY_TASK: 3}, customer_id=f"C-{n}", now=NOW): f"C-{n}" for n in range(requests)}
    run_to_the_end(Executor(store, {}, concurrency={}, max_in_flight=max_in_flight, lease_seconds=30,
                            clock=lambda: NOW, verifier=verifier))
    return {customer: next(r for r in store.get(request_id)[1] if r["system"] == VERIFY_TASK)
            for request_id, customer in ids.items()}


def test_the_executor_hands_due_checks_to_the_step_in_batches(tmp_path: Path) -> None:
    verifier = Recorder()
    tasks = _run(tmp_path, verifier, requests=40)
    sizes = sorted(len(batch) for batch in verifier.batches)
    assert sizes == [20, 20]  # 40 due: two jobs, evenly shared, none above VERIFY_BATCH
    assert sorted(c for batch in verifier.batches for c in batch) == sorted(f"C-{n}" for n in range(40))
    assert {c: t["state"] for c, t in tasks.items() if t["state"] != "confirmed"} == {"C-13": "retrying"}
    assert tasks["C-13"]["error_code"] == "crm_timeout"  # its own error, the batch's others confirmed


class Held(Recorder):
    """Holds every batch until the test lets them go."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def run_many(self, tasks: Sequence[ClaimedTask]) -> list[Any]:
        outcomes = super().run_many(tasks)
        self.release.wait(30)
        return outcomes


def test_a_burst_of_checks_takes_no_more_jobs_than_the_store_pool_has_connections_for(tmp_path: Path) -> None:
    """Each job holds a store connection: ``internal_limit`` jobs at once, whatever is due."""
    store, _ = _store(tmp_path)
    jobs = internal_limit(1000)
    due = jobs * VERIFY_BATCH + 44
    for n in range(due):
        record(store, {VERIFY_TASK: 3}, customer_id=f"C-{n}", now=NOW)
    verifier = Held()
    executor = Executor(store, {}, concurrency={}, max_in_flight=1000, lease_seconds=30, clock=lambda: NOW,
                        verifier=verifier)
    try:
        executor.tick()
        for _ in range(3):  # further turns while every job is held claim nothing
            time.sleep(0.05)
            executor.tick()
        assert sorted(len(batch) for batch in verifier.batches) == [VERIFY_BATCH] * jobs
        assert executor.busy() == jobs * VERIFY_BATCH
        verifier.release.set()
        deadline = time.monotonic() + 20
        while executor.busy() or executor.tick():
            assert time.monotonic() < deadline, "the checks never ended"
            executor.wait_for_calls(0.05)
            executor.tick()
    finally:
        executor.shutdown()
    assert sum(len(batch) for batch in verifier.batches) == due
    states_ = {row["state"] for request_id in _request_ids(store) for row in store.get(request_id)[1]}
    assert states_ == {"confirmed", "retrying"}  # C-13 retries; everyone else is verified


def _request_ids(store: Any) -> list[str]:
    import sqlalchemy as sa

    from worker.store.schema import requests

    with store.engine.connect() as conn:
        return [r[0] for r in conn.execute(sa.select(requests.c.request_id))]


@pytest.mark.parametrize(("fail", "code"), [(RetryableError("down", code="crm_down"), "crm_down"),
                                            (ValueError("a bug"), "unexpected_error")])
def test_a_batch_that_fails_as_a_whole_fails_each_of_its_requests_alike(tmp_path: Path, fail: BaseException,
                                                                        code: str) -> None:
    tasks = _run(tmp_path, Recorder(fail), requests=5)
    assert {(t["state"], t["error_code"]) for t in tasks.values()} == {("retrying", code)}


def test_a_batch_whose_worker_died_before_its_results_were_recorded_is_checked_again_and_completes_once(
        tmp_path: Path) -> None:
    """The batched path under a crash: the step ran (tombstones laid) and the worker died before the harvest.
    Another turn, once the leases ran out, checks the batch again: every erasure completes once, with one
    receipt saying so and one tombstone per identifier; the audit trail shows both layings, and the checks once."""
    import sqlalchemy as sa

    from worker.store.schema import audit_events, outbox

    store, vstore = _store(tmp_path)
    customers = tuple(f"C-{n}" for n in range(5))
    shop = loyalty.create("loyalty", {"url": loyalty_db(tmp_path, customers)}, context())
    ids = [record(store, {"loyalty": 3, VERIFY_TASK: 3}, customer_id=customer,
                  emails=[f"marie.{customer.lower()}@example.fr"], phones=[f"+3361234567{n}"], now=NOW)
           for n, customer in enumerate(customers)]
    for task in store.claim_due(now=NOW, lease_until=LEASE, limits={"loyalty": 9}, room=9):
        store.finish(task, states.Confirm(shop.erase(task.subject).outcome), TaskUpdate(), NOW)
    step = VerificationStep(vstore, {"loyalty": shop}, clock=lambda: NOW, tombstone_key=KEY)
    doomed = store.claim_due(now=NOW, lease_until=LEASE, limits={VERIFY_TASK: 9}, room=9)
    assert len(doomed) == 5 and all(not isinstance(o, Exception) for o in step.run_many(doomed))
    # The worker dies here: its outcomes are never recorded. Its leases run out.
    later = LEASE + timedelta(seconds=1)
    again = VerificationStep(vstore, {"loyalty": shop}, clock=lambda: later, tombstone_key=KEY)
    run_to_the_end(Executor(store, {}, concurrency={}, max_in_flight=64, lease_seconds=30, clock=lambda: later,
                            verifier=again))

    with store.engine.connect() as conn:
        completed = conn.execute(sa.select(outbox.c.key).where(outbox.c.headers_json.like('%"completed"%'))).all()
        actions = conn.execute(sa.select(audit_events.c.request_id, audit_events.c.action)
                               .where(audit_events.c.action.in_(["tombstoned", "verified"]))).all()
    assert sorted(key.decode() for (key,) in completed) == sorted(ids)  # one completed receipt each
    assert {store.get(request_id)[0]["status"] for request_id in ids} == {"completed"}
    assert vstore.tombstone_count(later) == 3 * len(ids)  # customer id, email and phone, once each
    for request_id in ids:
        done = [action for rid, action in actions if rid == request_id]
        assert sorted(done) == ["tombstoned", "tombstoned", "verified"]
    shop.close()
