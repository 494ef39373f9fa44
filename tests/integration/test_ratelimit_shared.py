"""Vendor limits shared by every worker on one PostgreSQL store.

A worker is a process with its own engine. Workers here are separate engines in this process, and
separate processes; each draws from the same names on a controlled clock, from several threads.
"""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command

from connectors import registry
from connectors.ratelimit import Gate
from devkit.pipeline import raw_settings
from devkit.standins import settings_for
from devkit.standins.google import GoogleAnalyticsStandIn
from devkit.standins.harness import FakeClock, fresh_limiters, make_subject  # noqa: F401 - autouse fixture
from worker import config
from worker.app import Worker
from worker.core.connector import ConnectorContext
from worker.core.errors import QuotaDeferred, RetryableError, Throttled
from worker.core.limits import QuotaSpec, RateSpec
from worker.store import db
from worker.store.ratelimits import StoreLimits
from worker.store.schema import leases, rate_buckets, rate_quotas

T0 = datetime(2027, 1, 15, 9, 0, tzinfo=UTC)
LA = "America/Los_Angeles"


@dataclass(frozen=True)
class Plan:
    """Each of ``threads`` callers walks the same schedule: ``tries`` admits at each of ``steps`` instants."""

    key: str
    rate: RateSpec
    steps: int
    step: float
    tries: int
    threads: int


def draw(limits: StoreLimits, plan: Plan) -> list[float]:
    """The fake-clock offsets (seconds after T0) of the calls admitted."""
    admitted: list[float] = []
    lock = threading.Lock()

    def caller() -> None:
        for i in range(plan.steps):
            for _ in range(plan.tries):
                if limits.admit([(plan.key, plan.rate)], [], T0 + timedelta(seconds=i * plan.step)) is None:
                    with lock:
                        admitted.append(i * plan.step)

    threads = [threading.Thread(target=caller) for _ in range(plan.threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return admitted


def other_worker(url: str, plans: list[Plan], barrier: Any, results: Any) -> None:
    """A worker process: its own engine; starts each plan with the others."""
    engine = db.create_engine(url)
    limits = StoreLimits(engine)
    with engine.connect():
        pass  # connected before the start line
    for plan in plans:
        barrier.wait(60)
        results.put((plan.key, draw(limits, plan)))
    engine.dispose()


@pytest.fixture
def store_url(pg_url: str) -> str:
    engine = db.create_engine(pg_url)
    db.migrate(engine)
    engine.dispose()
    return pg_url


@pytest.fixture
def workers(store_url: str) -> Iterator[list[StoreLimits]]:
    """Two workers' limits: one engine each."""
    engines = [db.create_engine(store_url) for _ in range(2)]
    yield [StoreLimits(engine) for engine in engines]
    for engine in engines:
        engine.dispose()


def peak(stamps: list[float], window: float) -> int:
    """The most stamps inside any closed window of ``window`` seconds."""
    stamps = sorted(stamps)
    return max((sum(1 for s in stamps[i:] if s <= start + window + 1e-9) for i, start in enumerate(stamps)),
               default=0)


def test_workers_in_other_processes_and_threads_share_one_budget(store_url: str) -> None:
    exact = Plan("burst", RateSpec(0.001, 40), steps=1, step=0.0, tries=10, threads=3)  # 90 tries at one instant
    paced = Plan("paced", RateSpec(5.0, 3), steps=200, step=0.01, tries=1, threads=3)  # 2 s of fake time
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(3), context.Queue()
    children = [context.Process(target=other_worker, args=(store_url, [exact, paced], barrier, results))
                for _ in range(2)]
    for child in children:
        child.start()
    engine = db.create_engine(store_url)
    mine = StoreLimits(engine)
    admitted: dict[str, list[float]] = {"burst": [], "paced": []}
    try:
        for plan in (exact, paced):
            barrier.wait(60)
            admitted[plan.key] += draw(mine, plan)
        for _ in range(4):
            key, stamps = results.get(timeout=60)
            admitted[key] += stamps
    finally:
        for child in children:
            child.join(60)
        engine.dispose()
    assert [child.exitcode for child in children] == [0, 0]
    assert len(admitted["burst"]) == 40  # 3 workers × 3 threads × 10 tries at one instant: exactly the burst
    paced_stamps = admitted["paced"]
    span = (paced.steps - 1) * paced.step
    assert len(paced_stamps) <= 3 + 5.0 * span  # burst + rate × window, for 9 callers together
    assert len(paced_stamps) >= 5.0 * span - 1  # and the budget was used, not refused wholesale
    for window in (0.2, 0.5, 1.0):
        assert peak(paced_stamps, window) <= 3 + 5.0 * window + 1e-9, window


def test_a_refused_admit_spends_nothing_in_the_store(workers: list[StoreLimits], store_url: str) -> None:
    first, second = workers
    clock = FakeClock(T0)
    rate, quota = ("vendor:rate", RateSpec(1.0, 1)), ("vendor:day", QuotaSpec(2))
    Gate("a", [rate], [quota], clock.now, first).admit()

    def state() -> tuple[float, int]:
        with first.engine.connect() as conn:
            return (conn.execute(sa.select(rate_buckets.c.tat)).scalar_one(),
                    conn.execute(sa.select(rate_quotas.c.used)).scalar_one())

    before = state()
    with pytest.raises(Throttled):  # the rate refuses after the quota said yes: the quota is not spent
        Gate("b", [rate], [quota], clock.now, second).admit()
    assert state() == before == (T0.timestamp() + 1.0, 1)
    clock.advance(1)
    Gate("b", [rate], [quota], clock.now, second).admit()
    clock.advance(1)
    with pytest.raises(QuotaDeferred):  # the quota refuses: the rate is not spent
        Gate("a", [rate], [quota], clock.now, first).admit()
    assert state() == (T0.timestamp() + 2.0, 2)


def test_a_hold_set_by_one_worker_throttles_the_other(workers: list[StoreLimits]) -> None:
    first, second = workers
    clock = FakeClock(T0)
    rate = [("facebook:app:1", RateSpec(2.0, 5))]
    Gate("facebook", rate, [], clock.now, first).hold(30)  # a 429 with Retry-After: 30
    other = Gate("facebook", rate, [], clock.now, second)
    with pytest.raises(Throttled) as caught:
        other.admit()
    assert caught.value.retry_after == pytest.approx(30)
    clock.advance(30)
    other.admit()  # the hold is over: one call, not a burst of five
    with pytest.raises(Throttled):
        other.admit()


def test_a_daily_quota_shared_by_two_workers_never_exceeds_its_limit_and_rolls_over_at_midnight(
        workers: list[StoreLimits]) -> None:
    quota = [("google_analytics:project:p", QuotaSpec(25, LA))]
    last_second = datetime(2026, 11, 25, 7, 59, 59, tzinfo=UTC)  # 23:59:59 PST

    def burst(now: datetime) -> list[float]:
        refusals: list[float] = []
        lock = threading.Lock()

        def caller(limits: StoreLimits) -> None:
            for _ in range(10):
                refusal = limits.admit([], quota, now)
                with lock:
                    refusals.append(refusal.wait if refusal is not None else 0.0)

        threads = [threading.Thread(target=caller, args=(limits,)) for limits in workers for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        return refusals

    today = burst(last_second)
    assert today.count(0.0) == 25 and set(today) == {0.0, 1.0}  # 60 tries; the rest wait one second
    tomorrow = burst(last_second + timedelta(seconds=1))  # midnight in Los Angeles, 08:00 UTC
    assert tomorrow.count(0.0) == 25 and max(tomorrow) == 24 * 3600


def test_the_vendors_word_reaches_every_worker(workers: list[StoreLimits]) -> None:
    """Real connectors, one per worker: a 429's Retry-After and a spent daily quota hold back the other."""
    clock = FakeClock()
    ga = GoogleAnalyticsStandIn(clock=clock.timestamp)
    ga.start()
    first, second = (registry.build("google_analytics", "google_analytics", settings_for("google_analytics", ga),
                                    ConnectorContext(now=clock.now, limits=limits)) for limits in workers)
    try:
        ga.rate_limit_next(1, retry_after="30")
        with pytest.raises(RetryableError) as caught:
            first.erase(make_subject(identifiers={"ga_client_id": ["1.1"]}))
        assert caught.value.retry_after == 30
        clock.advance(29)
        with pytest.raises(Throttled):
            second.erase(make_subject(identifiers={"ga_client_id": ["1.2"]}))
        assert ga.count("upsert") == 1  # held back by the other worker's hold, without a call
        clock.advance(1)
        ga.daily_limit = 0
        with pytest.raises(QuotaDeferred):
            second.erase(make_subject(identifiers={"ga_client_id": ["1.3"]}))  # the vendor says the day is spent
        clock.advance(5)
        with pytest.raises(QuotaDeferred):
            first.erase(make_subject(identifiers={"ga_client_id": ["1.4"]}))
        assert ga.count("upsert") == 2
    finally:
        first.close()
        second.close()
        ga.stop()


def test_an_unreachable_store_throttles_instead_of_calling_unmetered() -> None:
    engine = db.create_engine("postgresql+psycopg://oubli:oubli@127.0.0.1:1/nowhere?connect_timeout=2")
    clock = FakeClock()
    gate = Gate("nosto", [("nosto:x", RateSpec(5.0, 5))], [("nosto:x", QuotaSpec(10))], clock.now,
                StoreLimits(engine, retry_seconds=4.0))
    with pytest.raises(Throttled) as caught:
        gate.admit()
    assert caught.value.code == "limits_unavailable" and caught.value.retry_after == 4.0
    gate.hold(10)  # neither raises: the caller is already failing over the vendor's answer
    assert gate.exhaust_quotas() > 0
    engine.dispose()


def test_the_worker_lends_every_connector_the_store_limits(store_url: str, tmp_path: Path) -> None:
    ga = GoogleAnalyticsStandIn()
    ga.start()
    systems = {"ga": {"connector": "google_analytics",
                      "settings": settings_for("google_analytics", ga, rate_limit={"per_second": 1, "burst": 1})}}
    raw = raw_settings(store_url=store_url, bootstrap="127.0.0.1:1", systems=systems)
    pair = [Worker(config.build(raw, env={}), serve_http=False) for _ in range(2)]
    try:
        gates = [worker.connectors["ga"].gate for worker in pair]  # type: ignore[attr-defined]
        assert all(isinstance(gate.limits, StoreLimits) and gate.limits.engine is worker.engine
                   for gate, worker in zip(gates, pair, strict=True))
        gates[0].admit()
        with pytest.raises(Throttled):
            gates[1].admit()
    finally:
        for worker in pair:
            worker.consumer.close()
            for connector in worker.connectors.values():
                connector.close()
            worker.engine.dispose()
        ga.stop()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_migration_from_0001_adds_the_limits_and_keeps_the_data(backend: str, tmp_path: Path,
                                                                    request: pytest.FixtureRequest) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}" if backend == "sqlite" else request.getfixturevalue("pg_url")
    engine = db.create_engine(url)
    db.migrate(engine, "0001")
    with engine.begin() as conn:
        conn.execute(leases.insert().values(name="outbox-relay", owner="w1", expires_at=T0))
    assert db.pending_migrations(engine)
    db.migrate(engine)
    assert not db.pending_migrations(engine)
    limits = StoreLimits(engine)
    assert limits.admit([("k", RateSpec(1, 1))], [("k", QuotaSpec(1))], T0) is None
    assert limits.admit([("k", RateSpec(1, 1))], [], T0) is not None
    with engine.connect() as conn:
        assert conn.execute(sa.select(leases.c.owner)).scalar_one() == "w1"
    with engine.begin() as conn:
        command.downgrade(db._alembic_config(conn), "0001")
    assert not {"rate_buckets", "rate_quotas"} & set(sa.inspect(engine).get_table_names())
    with engine.connect() as conn:
        assert conn.execute(sa.select(leases.c.owner)).scalar_one() == "w1"
    engine.dispose()
