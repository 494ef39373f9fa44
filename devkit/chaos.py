"""The chaos scenario shared by ``tests/e2e/test_chaos.py`` and ``bench/chaos.py``: SIGKILLs at random instants.

All ten systems run as in ``tests/integration/test_all_systems.py`` (the sample SQL databases on PostgreSQL, call
recordings in S3, the five vendor stand-ins served by this process). ``oubli worker`` processes run
in slots. While a stream of erasures and exports (an export always before its subject's erasure)
goes in, a random slot is SIGKILLed every ``kill_every`` seconds (uniform) and restarted at once,
mostly under the same ``worker_id`` (its restart reclaims its leases) and sometimes under another
(the dead one's leases must expire). Workers use static group membership (``group.instance.id`` =
worker id), as a StatefulSet would, so a restart does not stall intake behind a rebalance.

What "applied once" means here, per system, checked by ``verify``:

* the orchestrator recorded exactly one confirmation per request and system (a killed attempt's
  result is never recorded), and each request has exactly one distinct terminal receipt;
* SQL systems: the erased subjects' rows are gone (loyalty, newsletter, contact_forms; orders_db
  keeps invoices by law), every other subject's rows are untouched, and the newsletter suppression
  list holds no duplicate;
* S3 recordings: no version is left under an erased subject's prefix; every other prefix keeps all
  of its versions;
* vendors: no stand-in holds an erased subject any more, and every bystander is still held.

A retried call to a system is allowed (an attempt may die after the system acted and before its
result was recorded): deleting what is already gone changes nothing. It is the effect that must
not be doubled or spill over onto other subjects.
"""

from __future__ import annotations

import json
import random
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from devkit import allsystems, services, standins
from devkit.pipeline import Receipts, WorkerProcess, raw_settings, settings_from
from devkit.sampledata.bundle import DEMO_INDEX
from worker.core.timefmt import utcnow
from worker.store import db
from worker.support import CommandPublisher, build_command

S3_KEYS = {"endpoint_url": services.S3_ENDPOINT, "access_key_id": "testing", "secret_access_key": "testing"}
ERASED_GONE = ("loyalty", "newsletter", "contact_forms")
SUBJECT_COLUMNS = {"customer_id", "email", "email_hmac"}


@dataclass(frozen=True)
class Person:
    customer_id: str
    email: str
    phone: str | None
    identifiers: dict[str, list[str]]

    def needles(self) -> tuple[str, ...]:
        """What an erasure finds a subject by (emails match whatever their case)."""
        return (self.customer_id.lower(), self.email.lower(), *([self.phone] if self.phone else []))


@dataclass
class Kill:
    at: datetime
    worker_id: str
    held: list[tuple[str, str]]  # (request_id, system) the killed worker held a lease on


@dataclass
class Report:
    kills: list[Kill] = field(default_factory=list)
    request_ids: list[str] = field(default_factory=list)
    takeover: list[float] = field(default_factory=list)  # kill -> next claim of a task it held
    to_complete: list[float] = field(default_factory=list)  # kill -> completion of a request it held
    seconds: float = 0.0
    restarts_same_id: int = 0

    def summary(self) -> str:
        def stats(values: list[float]) -> str:
            if not values:
                return "n/a"
            return f"median {statistics.median(values):.1f} s, max {max(values):.1f} s (n={len(values)})"

        return (f"{len(self.kills)} SIGKILLs ({self.restarts_same_id} restarts under the same worker_id), "
                f"{len(self.request_ids)} requests, {self.seconds:.0f} s in all\n"
                f"  kill -> its tasks claimed again: {stats(self.takeover)}\n"
                f"  kill -> affected request completed: {stats(self.to_complete)}")


class Chaos:
    def __init__(self, *, store_url: str, new_schema: Callable[[], str], kafka: str, s3: Any, bucket: str,
                 workdir: Path, seed: int = 7, customers: int = 120, slots: int = 3, ids: int = 5,
                 lease_seconds: float = 5.0) -> None:
        self.rng = random.Random(seed)  # noqa: S311 - a reproducible schedule, not a secret
        self.store_url = store_url
        self.s3 = s3
        self.bucket = bucket
        self.workdir = workdir
        self.sql = {system: new_schema() for system in allsystems.INTERNAL_SQL}
        exports = f"{bucket}-x"
        s3.create_bucket(Bucket=exports, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
        allsystems.seed(self.sql, s3, bucket, utcnow(), customers=customers)
        self.people = self._people()
        standins.start_all()
        self.vendors = standins.running()
        for person in self.people:
            self.vendors.seed_subject(emails=[person.email], phones=[person.phone] if person.phone else [],
                                      identifiers=person.identifiers)
        systems = allsystems.systems_config(self.sql, recordings_bucket=bucket, s3=S3_KEYS, vendors=self.vendors)
        self.raw = raw_settings(store_url=store_url, bootstrap=kafka, systems=systems, identity_system="orders_db",
                                export={"bucket": exports}, s3=S3_KEYS)
        self.raw["worker"]["lease_seconds"] = lease_seconds
        # Workers here live 0.3-1.5 s on purpose, so a slow call (an orders_db erasure on a busy
        # machine) is killed again and again through no fault of its own. worker_lost_repeatedly,
        # the guard against a call that kills its worker, is shown by test_recovery and test_states.
        self.raw["worker"]["max_lease_losses"] = 10_000
        self.settings = settings_from(self.raw)
        self.engine = sa.create_engine(store_url, poolclass=sa.pool.NullPool)
        db.migrate(self.engine)
        self.ids = [f"chaos-{i}" for i in range(ids)]
        self.slot_count = min(slots, ids - 1)
        self.before = self._snapshot()

    # --- set-up ------------------------------------------------------------------------------

    def _people(self) -> list[Person]:
        engine = sa.create_engine(self.sql["orders_db"], poolclass=sa.pool.NullPool)
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT customer_id, email, phone FROM customers ORDER BY customer_id")).all()
            ids = conn.execute(sa.text("SELECT customer_id, kind, value FROM customer_identifiers")).all()
        engine.dispose()
        identifiers: dict[str, dict[str, list[str]]] = {}
        for customer_id, kind, value in ids:
            identifiers.setdefault(customer_id, {}).setdefault(kind, []).append(value)
        demo = allsystems.demo_subject(utcnow()).customer_id
        assert DEMO_INDEX  # the contract's example subject is left to the other tests
        return [Person(c, e, p, identifiers.get(c, {})) for c, e, p in rows if c != demo]

    def _worker(self, worker_id: str) -> WorkerProcess:
        kafka = {**self.raw["kafka"], "client": {"group.instance.id": worker_id}}
        return WorkerProcess({**self.raw, "kafka": kafka}, self.workdir, worker_id)

    # --- the run -----------------------------------------------------------------------------

    def run(self, *, kills: int, requests: int, life: tuple[float, float] = (0.3, 1.5), early: float = 0.2,
            timeout: float = 240.0) -> Report:
        """Each slot's worker is SIGKILLed at a random instant of its working life: ``life`` (uniform)
        seconds after it logged ``worker_started``, or, one time in 1/``early``, while it starts up."""
        report = Report()
        plan = self._plan(requests)
        report.request_ids = [c["request_id"] for c, _ in plan]
        receipts = Receipts(self.settings)
        publisher = CommandPublisher(self.settings.kafka)
        workers = {worker_id: self._worker(worker_id) for worker_id in self.ids}
        running = self.ids[: self.slot_count]
        started = time.monotonic()
        death: list[float | None] = []
        starts: list[int] = []

        def launch(slot: int) -> None:
            worker = workers[running[slot]]
            starts[slot] = worker.logs().count("worker_started")
            worker.start(OUBLI_WORKER_ID=running[slot])
            early_death = time.monotonic() + self.rng.uniform(0, 1.0)
            death[slot] = early_death if self.rng.random() < early else None

        for slot in range(len(running)):
            death.append(None)
            starts.append(0)
            launch(slot)
        # Commands go in over the first two thirds of the kills, so that kills land on every stage.
        publish_every = (2.0 + sum(life) / 2) * kills / len(running) * 2 / 3 / max(len(plan), 1)
        next_publish = started
        try:
            while len(report.kills) < kills:
                now = time.monotonic()
                while plan and now >= next_publish:
                    command, _ = plan.pop(0)
                    publisher.publish(command, lambda _ok: None)
                    next_publish += publish_every
                receipts.drain(0.01)
                for slot, worker_id in enumerate(running):
                    if death[slot] is None and workers[worker_id].logs().count("worker_started") > starts[slot]:
                        death[slot] = now + self.rng.uniform(*life)
                due = [slot for slot, at in enumerate(death) if at is not None and now >= at]
                if due:
                    victim = due[0]
                    report.kills.append(self._kill(workers[running[victim]]))
                    spare = [i for i in self.ids if i not in running]
                    if spare and self.rng.random() < 0.3:
                        running[victim] = self.rng.choice(spare)
                    else:
                        report.restarts_same_id += 1
                    launch(victim)
                time.sleep(0.02)
            while plan:
                command, _ = plan.pop(0)
                publisher.publish(command, lambda _ok: None)
            assert publisher.flush() == 0, "commands were not acknowledged"
            deadline = time.monotonic() + timeout
            pending = set(report.request_ids)
            while pending and time.monotonic() < deadline:
                receipts.drain(0.2)
                pending = {r for r in pending if (receipts.latest(r) or {}).get("status") not in ("completed",
                                                                                                 "rejected")}
            receipts.drain(1.0)
        finally:
            for worker_id in running:
                workers[worker_id].terminate(60)
            for worker in workers.values():
                worker.kill()
        report.seconds = time.monotonic() - started
        self.receipts = receipts
        self.plan_kinds = {c["request_id"]: c["kind"] for c, _ in self._planned}
        self._measure(report)
        receipts.close()
        return report

    def _plan(self, requests: int) -> list[tuple[dict[str, Any], Person]]:
        """Erasures, exports, and exports followed by their subject's erasure; a bystander is never named."""
        people = list(self.people)
        self.rng.shuffle(people)
        plan: list[tuple[dict[str, Any], Person]] = []
        self.erased: list[Person] = []
        while len(plan) < requests and people:
            person = people.pop()
            roll = self.rng.random()
            kinds = ["erasure"] if roll < 0.5 else ["export"] if roll < 0.75 else ["export", "erasure"]
            for kind in kinds:
                plan.append((build_command(kind=kind, customer_id=person.customer_id, emails=[person.email],
                                           phones=[person.phone] if person.phone else [],
                                           requested_by="chaos-test", request_id=str(uuid.uuid4())), person))
            if "erasure" in kinds:
                self.erased.append(person)
        self.bystanders = people
        self._planned = list(plan)
        return plan

    def _kill(self, worker: WorkerProcess) -> Kill:
        worker.kill()
        at = utcnow()
        worker_id = worker.config_path.stem
        with self.engine.connect() as conn:
            held = conn.execute(sa.text("SELECT request_id, system FROM tasks WHERE state = 'running' "
                                        "AND lease_owner = :w"), {"w": worker_id}).all()
        return Kill(at, worker_id, [(r, s) for r, s in held])

    def _measure(self, report: Report) -> None:
        with self.engine.connect() as conn:
            claims = conn.execute(sa.text("SELECT request_id, system, at FROM audit_events WHERE action = 'claimed' "
                                          "ORDER BY at")).all()
            completed = dict(conn.execute(sa.text("SELECT request_id, completed_at FROM requests")).all())
        by_task: dict[tuple[str, str], list[datetime]] = {}
        for request_id, system, at in claims:
            by_task.setdefault((request_id, system), []).append(at)
        for kill in report.kills:
            for key in kill.held:
                later = [at for at in by_task.get(key, []) if at > kill.at]
                if later:
                    report.takeover.append((later[0] - kill.at).total_seconds())
            for request_id in {r for r, _ in kill.held}:
                done = completed.get(request_id)
                if done is not None:
                    report.to_complete.append((done - kill.at).total_seconds())

    # --- what must hold ------------------------------------------------------------------------

    def _snapshot(self) -> dict[str, Any]:
        tables: dict[str, dict[str, list[str]]] = {}
        for system, url in self.sql.items():
            engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
            inspector = sa.inspect(engine)
            # Tables whose rows name their subject; the others (order lines...) follow their parent row.
            named = [t for t in inspector.get_table_names()
                     if SUBJECT_COLUMNS & {c["name"] for c in inspector.get_columns(t)}]
            with engine.connect() as conn:
                tables[system] = {
                    table: sorted(repr(tuple(row)) for row in conn.execute(sa.text(f'SELECT * FROM "{table}"')))  # noqa: S608
                    for table in named
                }
            engine.dispose()
        versions: Counter[str] = Counter()
        for page in self.s3.get_paginator("list_object_versions").paginate(Bucket=self.bucket):
            for item in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]:
                versions[item["Key"]] += 1
        return {"tables": tables, "versions": versions}

    def verify(self, report: Report) -> None:
        """Every request completed once, every effect applied once (see the module docstring)."""
        for request_id in report.request_ids:
            terminal = {json.dumps(r, sort_keys=True) for r in self.receipts.of(request_id)
                        if r["status"] in ("completed", "rejected", "action_required")}
            latest = self.receipts.latest(request_id)
            assert latest is not None and latest["status"] == "completed", (request_id, latest)
            assert len(terminal) == 1, f"{request_id}: {len(terminal)} different terminal receipts"
            if self.plan_kinds[request_id] == "export":
                assert latest["export"] and latest["export"]["size_bytes"] > 0
        with self.engine.connect() as conn:
            confirms = Counter(conn.execute(sa.text(
                "SELECT request_id, system FROM audit_events WHERE action = 'confirm'")).all())
            tasks = conn.execute(sa.text("SELECT request_id, system FROM tasks")).all()
        doubled = {key: n for key, n in confirms.items() if n != 1}
        assert not doubled, f"results recorded more than once: {doubled}"
        assert {tuple(t) for t in tasks} == set(confirms), "a task was never confirmed"

        after = self._snapshot()
        needles = [n for person in self.erased for n in person.needles()]
        for system, tables in self.before["tables"].items():
            for table, rows in tables.items():
                others = Counter(r for r in rows if not any(n in r.lower() for n in needles))
                now = Counter(after["tables"][system][table])
                assert not (others - now), f"{system}.{table}: a bystander's row changed"
                if system in ERASED_GONE:
                    assert not [r for r in now if any(n in r.lower() for n in needles)], f"{system}.{table}: not erased"
                if table == "suppressions":  # the one table an erasure adds to: one entry per subject at most
                    added = now - Counter(rows)
                    assert max(added.values(), default=1) == 1 and sum(added.values()) <= len(self.erased)
        for key, count in self.before["versions"].items():
            owner = next((p for p in self.erased if f"/{p.customer_id}/" in key), None)
            if owner is None:
                assert after["versions"][key] == count, "a bystander's recording changed"
            else:
                assert after["versions"][key] == 0, "an erased subject's recording is left"
        for person, erased in [*((p, True) for p in self.erased), *((p, False) for p in self.bystanders)]:
            held = self.vendors.holds_subject(emails=[person.email], phones=[person.phone] if person.phone else [],
                                              identifiers=person.identifiers)
            if erased:
                assert not any(held.values()), f"a vendor still holds an erased subject: {held}"
            else:
                assert held["nosto"], "a bystander was erased at a vendor"

    def close(self) -> None:
        self.engine.dispose()
