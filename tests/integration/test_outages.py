"""Nothing acknowledged is lost when the store goes away: intake pauses, nothing is acknowledged or lost, and the
worker carries on by itself once the database is back."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import pytest

from devkit import fakes
from devkit.netproxy import Proxy
from devkit.pipeline import Receipts, raw_settings, settings_from, subject_command
from tests.unit.test_shutdown import closed_port
from worker import config, metrics
from worker.app import Worker
from worker.loop import SHUTDOWN_MARGIN_SECONDS
from worker.stall import StalledTooLong
from worker.support import publish_command


def test_a_database_outage_pauses_intake_and_loses_nothing(
    proxied_store: tuple[str, Proxy], pg_url: str, kafka_bootstrap: str,
) -> None:
    store_url, proxy = proxied_store
    systems: dict[str, Any] = {"alpha": {"connector": "devkit.fakes", "settings": {"url": pg_url}}}
    settings = settings_from(raw_settings(store_url=store_url, bootstrap=kafka_bootstrap, systems=systems))
    worker = Worker(settings, serve_http=False)
    worker.start()
    receipts = Receipts(settings)
    try:
        before = subject_command()
        publish_command(settings.kafka, before)
        receipts.wait(before["request_id"], {"completed"}, step=worker.run_once)

        proxy.cut()
        during = [subject_command() for _ in range(3)]
        for command in during:
            publish_command(settings.kafka, command)
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            worker.run_once()  # must not raise
        assert not worker._ready(), "readiness must drop while the store is unreachable"
        receipts.drain(0.5)
        assert all(receipts.latest(c["request_id"]) is None for c in during)

        proxy.heal()
        for command in during:
            receipts.wait(command["request_id"], {"completed"}, step=worker.run_once, timeout=60)
        assert worker._ready()
    finally:
        receipts.close()
        worker.close()
    for command in [before, *during]:
        assert fakes.effect_count(pg_url, command["request_id"], "erase") == 1


def test_calls_that_returned_during_a_store_outage_are_not_counted_as_running(
    proxied_store: tuple[str, Proxy], pg_url: str, kafka_bootstrap: str,
) -> None:
    """Their results wait for the store; the calls themselves are over, and oubli_calls_in_flight says so."""
    store_url, proxy = proxied_store
    systems: dict[str, Any] = {"alpha": {"connector": "devkit.fakes",
                                         "settings": {"url": pg_url, "delay_seconds": 0.5}}}
    settings = settings_from(raw_settings(store_url=store_url, bootstrap=kafka_bootstrap, systems=systems))
    worker = Worker(settings, serve_http=False)
    worker.start()
    try:
        commands = [subject_command() for _ in range(2)]
        for command in commands:
            publish_command(settings.kafka, command)
        deadline = time.monotonic() + 60
        while worker.executor.calls_running() < 2:
            assert time.monotonic() < deadline, "the calls did not start"
            worker.run_once()
        worker.run_once()
        assert metrics.REGISTRY.get_sample_value("oubli_calls_in_flight") == 2
        proxy.cut()
        deadline = time.monotonic() + 3  # the calls (0.5 s) return meanwhile; their results cannot be recorded
        while time.monotonic() < deadline:
            worker.run_once()
        assert worker.executor.calls_running() == 0
        assert metrics.REGISTRY.get_sample_value("oubli_calls_in_flight") == 0
        proxy.heal()
    finally:
        worker.close()


@pytest.mark.parametrize("stop_asked", [False, True])
def test_a_store_that_goes_silent_ends_the_worker_with_exit_4_after_the_outage_limit(
    proxied_store: tuple[str, Proxy], pg_url: str, kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch,
    stop_asked: bool,
) -> None:
    """A database that stops answering but closes nothing (paused, a route dropping packets) raises no error: the
    loop waits in a read. Past ``store_outage_exit_seconds`` without a turn the worker still exits 4, as after any
    outage, instead of holding its partitions and leases for ever. A SIGTERM met during that read only sets the stop
    flag, and the drain never starts: the process then ends within the shutdown's budget."""
    store_url, proxy = proxied_store
    systems: dict[str, Any] = {"alpha": {"connector": "devkit.fakes", "settings": {"url": pg_url}}}
    raw = raw_settings(store_url=store_url, bootstrap=kafka_bootstrap, systems=systems)
    raw["worker"].update(store_outage_exit_seconds=60 if stop_asked else 3, drain_seconds=0)
    limit = 0 + SHUTDOWN_MARGIN_SECONDS + 5 if stop_asked else 3
    worker = Worker(settings_from(raw), serve_http=False)
    exits: list[tuple[int, float]] = []

    def let_go() -> None:
        worker.stop.ask()
        proxy.heal()

    def exit_now(code: int) -> None:  # os._exit, recorded; then the loop is let go so that the test can end
        exits.append((code, time.monotonic()))
        let_go()

    monkeypatch.setattr(os, "_exit", exit_now)
    real_turn, frozen_at = worker.run_once, []

    def turn() -> None:
        if not frozen_at and time.monotonic() - started > 2:
            proxy.freeze()
            frozen_at.append(time.monotonic())
            if stop_asked:  # what the SIGTERM handler does, once the loop sits in the read
                threading.Timer(0.5, worker.stop.ask).start()
        real_turn()

    worker.run_once = turn  # type: ignore[method-assign]
    safety = threading.Timer(limit + 25, let_go)  # the old code waited here for ever
    safety.start()
    started = time.monotonic()
    try:
        worker.run()
    finally:
        safety.cancel()
        proxy.heal()
    assert frozen_at and exits, "the worker sat in a read of a silent store and never gave up"
    assert exits[0][0] == 4
    assert limit <= exits[0][1] - frozen_at[0] < limit + 5


def test_a_worker_started_while_the_store_is_down_waits_for_it_and_then_works(
    proxied_store: tuple[str, Proxy], pg_url: str, kafka_bootstrap: str,
) -> None:
    """A pod restarted during a database restart waits for the store (up to ``store_outage_exit_seconds``, as a
    running worker does) instead of exiting at once, which put it in a crash loop whose backoff outlasts the outage."""
    store_url, proxy = proxied_store
    systems: dict[str, Any] = {"alpha": {"connector": "devkit.fakes", "settings": {"url": pg_url}}}
    raw = raw_settings(store_url=store_url, bootstrap=kafka_bootstrap, systems=systems)
    raw["worker"].update(store_outage_exit_seconds=30, store_retry_max_seconds=0.5)
    settings = settings_from(raw)
    proxy.cut()
    threading.Timer(3, proxy.heal).start()
    started = time.monotonic()
    worker = Worker(settings, serve_http=False)  # used to raise OperationalError at once
    assert time.monotonic() - started >= 2.5
    worker.start()
    receipts = Receipts(settings)
    try:
        command = subject_command()
        publish_command(settings.kafka, command)
        receipts.wait(command["request_id"], {"completed"}, step=worker.run_once, timeout=60)
    finally:
        receipts.close()
        worker.close()


def test_a_worker_started_while_the_store_stays_down_gives_up_after_the_outage_limit(tmp_path: Any) -> None:
    raw = raw_settings(store_url=f"postgresql+psycopg://u:p@127.0.0.1:{closed_port()}/db",
                       bootstrap="127.0.0.1:1", systems={"alpha": {"connector": "devkit.fakes",
                                                                   "settings": {"url": "sqlite://"}}})
    raw["worker"].update(store_outage_exit_seconds=2, store_retry_max_seconds=0.5)
    started = time.monotonic()
    with pytest.raises(StalledTooLong):  # exit 4, as for a running worker
        Worker(config.build(raw, env={}), serve_http=False)
    assert 2 <= time.monotonic() - started < 6
