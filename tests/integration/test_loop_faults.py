"""The main loop never hangs or crashes on a fault: store outages are held with a bounded
backoff, surfaced in /readyz and /metrics, and end in a clean exit past the limit; an error in a step is
logged by type, counted and retried; store sessions carry timeouts; SQL errors and librdkafka's own lines
carry no personal data."""

from __future__ import annotations

import io
import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import structlog
from confluent_kafka import KafkaError, KafkaException, Producer
from structlog.testing import capture_logs

from devkit import fakes
from devkit.netproxy import Proxy
from devkit.pipeline import Receipts, raw_settings, settings_from, subject_command
from worker import config, kafka, logs, metrics
from worker.app import Worker
from worker.config import KafkaSettings, WorkerSettings
from worker.stall import Stall, StalledTooLong
from worker.store import db
from worker.store.faults import is_outage
from worker.support import publish_command

FAST = {"store_retry_max_seconds": 0.2}


def _sample(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:  # noqa: S310
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


# --- the backoff itself ----------------------------------------------------------------------------------------

def test_backoff_doubles_to_its_cap_with_jitter_and_resets() -> None:
    low = Stall(base=1.0, cap=30.0, jitter=lambda: 0.0)
    high = Stall(base=1.0, cap=30.0, jitter=lambda: 0.999999)
    assert [round(low.failed(100.0), 2) for _ in range(7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 15.0]
    assert [round(high.failed(100.0), 2) for _ in range(7)] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert high.active and not high.due(129.0) and high.due(130.0) and high.lasted(160.0) == 60.0
    high.recovered()
    assert not high.active and high.due(0.0) and high.lasted(1e9) == 0.0


def test_after_a_long_outage_the_store_is_tried_again_within_seconds_by_default() -> None:
    """The cap on the backoff is also how late intake resumes once the store is back: at 30 s, a 40 s database
    restart held every worker's intake for up to 30 s after the database answered again."""
    cap = WorkerSettings().store_retry_max_seconds
    stall = Stall(cap=cap, jitter=lambda: 0.999999)
    waits = [stall.failed(float(second)) for second in range(40)]  # a long outage: forty failed tries
    assert max(waits) <= 5.0 and waits[-1] > 4.9


# --- a step that raises -----------------------------------------------------------------------------------------

@pytest.fixture
def offline_worker(tmp_path: Path) -> Iterator[Worker]:
    """A worker on a SQLite store whose broker does not exist: enough to drive its loop steps by hand."""
    settings = config.build({
        "subject_key": "k", "store_url": f"sqlite:///{tmp_path / 'store.db'}",
        "kafka": {"bootstrap_servers": f"127.0.0.1:{_free_port()}"}, "worker": {"http_port": 0, **FAST},
    }, env={})
    worker = Worker(settings, migrate=True, serve_http=False)
    yield worker
    worker.close()


def test_a_step_that_keeps_raising_is_logged_counted_and_retried_never_fatal(offline_worker: Worker) -> None:
    calls: list[int] = []

    def broken_step() -> None:
        calls.append(1)
        if len(calls) <= 2:
            raise KeyError("marie@example.fr")  # the kind of message a bug may carry: it must not be logged

    before = _sample("oubli_loop_errors_total", step="broken", kind="KeyError")
    with capture_logs() as captured:
        offline_worker._guarded("broken", broken_step)
        offline_worker._guarded("broken", broken_step)  # within the backoff: skipped
        assert len(calls) == 1 and not offline_worker._ready()
        time.sleep(0.25)  # the cap is 0.2 s
        offline_worker._guarded("broken", broken_step)
        time.sleep(0.25)
        offline_worker._guarded("broken", broken_step)
    assert len(calls) == 3 and offline_worker._ready()
    assert _sample("oubli_loop_errors_total", step="broken", kind="KeyError") - before == 2
    failures = [event for event in captured if event["event"] == "loop_step_failed"]
    assert len(failures) == 2 and failures[0]["error_type"] == "KeyError"
    assert failures[0]["site"].startswith("test_loop_faults.py:")
    assert "marie" not in json.dumps(captured, default=str)


def test_a_fatal_kafka_error_in_a_step_still_stops_the_loop(offline_worker: Worker) -> None:
    def fenced() -> None:
        raise KafkaException(KafkaError(KafkaError._FENCED, "fenced", fatal=True))

    with pytest.raises(KafkaException):
        offline_worker._guarded("relay", fenced)


# --- store outages ----------------------------------------------------------------------------------------------

def test_a_store_pool_timeout_is_an_outage_not_a_crash(pg_url: str, tmp_path: Path) -> None:
    settings = config.build({
        "subject_key": "k", "store_url": pg_url, "kafka": {"bootstrap_servers": f"127.0.0.1:{_free_port()}"},
        "worker": {"http_port": 0, **FAST},
    }, env={})
    worker = Worker(settings, migrate=True, serve_http=False)

    def timeouts() -> float:  # the first store step of the turn meets it (the relay's), and the rest wait
        return sum(_sample("oubli_store_errors_total", step=step, kind="TimeoutError")
                   for step in ("relay", "executor"))

    before = timeouts()
    # Every connection the pool may hand out (pool_size + max_overflow), held elsewhere: the next checkout waits
    # out the pool timeout and raises sqlalchemy.exc.TimeoutError, which is not a DBAPIError.
    pool = worker.engine.pool
    held = [worker.engine.connect() for _ in range(pool.size() + pool._max_overflow)]  # type: ignore[attr-defined]
    try:
        worker.run_once()  # must not raise
        assert timeouts() - before == 1
        assert not worker._ready() and worker.store_stall.active
    finally:
        for connection in held:
            connection.close()
    try:
        deadline = time.monotonic() + 10
        while not worker._ready() and time.monotonic() < deadline:
            worker.run_once()
        assert worker._ready(), "the probe must notice the store is back"
    finally:
        worker.close()


def test_an_outage_past_the_limit_is_surfaced_then_exits_and_loses_nothing(
    proxied_store: tuple[str, Proxy], pg_url: str, kafka_bootstrap: str,
) -> None:
    store_url, proxy = proxied_store
    systems: dict[str, Any] = {"alpha": {"connector": "devkit.fakes", "settings": {"url": pg_url}}}
    raw = raw_settings(store_url=store_url, bootstrap=kafka_bootstrap, systems=systems)
    raw["worker"].update(FAST, store_outage_exit_seconds=3)
    settings = settings_from(raw)
    worker = Worker(settings, serve_http=True)
    assert worker.health is not None
    worker.start()
    command = subject_command()
    seen: dict[str, Any] = {}
    try:
        proxy.cut()
        publish_command(settings.kafka, command)
        with pytest.raises(StalledTooLong):
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                worker.run_once()
                if worker.store_stall.lasted(time.monotonic()) > 1 and not seen:
                    seen["readyz"] = _get(worker.health.port, "/readyz")[0]
                    seen["metrics"] = _get(worker.health.port, "/metrics")[1]
    finally:
        worker.close()
    assert seen["readyz"] == 503
    assert "oubli_intake_paused 1.0" in seen["metrics"]
    outage = next(line for line in seen["metrics"].splitlines() if line.startswith("oubli_store_outage_seconds "))
    assert float(outage.split()[1]) > 0.5

    proxy.heal()
    successor = Worker(settings, serve_http=False)
    successor.start()
    receipts = Receipts(settings)
    try:
        receipts.wait(command["request_id"], {"completed"}, step=successor.run_once)
    finally:
        receipts.close()
        successor.close()
    assert fakes.effect_count(pg_url, command["request_id"], "erase") == 1


def test_an_intake_that_raises_is_rewound_and_retried_never_skipped(pg_url: str, kafka_bootstrap: str) -> None:
    systems: dict[str, Any] = {"alpha": {"connector": "devkit.fakes", "settings": {"url": pg_url}}}
    raw = raw_settings(store_url=pg_url, bootstrap=kafka_bootstrap, systems=systems)
    raw["worker"].update(FAST)
    settings = settings_from(raw)
    worker = Worker(settings, migrate=True, serve_http=False)
    handle, failures = worker.intake.handle_batch, []

    def breaks_twice(*args: Any) -> Any:
        if len(failures) < 2:  # intake breaking its contract (it should dead-letter, never raise)
            failures.append(1)
            raise RuntimeError("unexpected")
        return handle(*args)

    worker.intake.handle_batch = breaks_twice  # type: ignore[method-assign]
    before = _sample("oubli_loop_errors_total", step="intake", kind="RuntimeError")
    worker.start()
    receipts = Receipts(settings)
    command = subject_command()
    try:
        publish_command(settings.kafka, command)
        receipts.wait(command["request_id"], {"completed"}, step=worker.run_once)
    finally:
        receipts.close()
        worker.close()
    assert _sample("oubli_loop_errors_total", step="intake", kind="RuntimeError") - before == 2
    assert fakes.effect_count(pg_url, command["request_id"], "erase") == 1


# --- store sessions ---------------------------------------------------------------------------------------------

def test_store_sessions_carry_timeouts_and_the_url_keeps_its_own(pg_url: str) -> None:
    engine = db.create_engine(pg_url)
    with engine.connect() as conn:
        names = ("statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout", "search_path")
        shown = {name: conn.execute(sa.text(f"SHOW {name}")).scalar_one() for name in names}
    engine.dispose()
    assert shown["statement_timeout"] == "15s" and shown["lock_timeout"] == "5s"
    assert shown["idle_in_transaction_session_timeout"] == "1min"
    assert shown["search_path"].startswith("t_"), "the URL's own options must survive"

    url = sa.make_url(pg_url)
    options = f"{url.query['options']} -c statement_timeout=200 -c lock_timeout=200"
    tight = db.create_engine(url.update_query_dict({"options": options}).render_as_string(hide_password=False))
    holder = db.create_engine(pg_url)
    try:
        with tight.connect() as conn:
            assert conn.execute(sa.text("SHOW search_path")).scalar_one().startswith("t_")
            with pytest.raises(sa.exc.OperationalError) as slow:
                conn.execute(sa.text("SELECT pg_sleep(2)"))
        assert is_outage(slow.value), "a statement timeout is the store's fault, not the data's"
        with holder.connect() as owner, tight.connect() as waiter:
            owner.execute(sa.text("SELECT pg_advisory_lock(424242)"))
            with pytest.raises(sa.exc.OperationalError) as blocked:
                waiter.execute(sa.text("SELECT pg_advisory_lock(424242)"))
            owner.execute(sa.text("SELECT pg_advisory_unlock(424242)"))
        assert is_outage(blocked.value), "a lock timeout is contention, not the data's fault"
    finally:
        tight.dispose()
        holder.dispose()


def test_sql_errors_never_print_bound_values(db_url: str) -> None:
    engine = db.create_engine(db_url)
    try:
        with engine.connect() as conn, pytest.raises(sa.exc.DBAPIError) as caught:
            conn.execute(sa.text("SELECT :email FROM no_such_table"), {"email": "marie@example.fr"})
    finally:
        engine.dispose()
    assert "no_such_table" in str(caught.value)
    assert "marie" not in str(caught.value) and "marie" not in repr(caught.value)


# --- librdkafka's own lines -------------------------------------------------------------------------------------

def test_librdkafka_lines_arrive_as_redacted_json() -> None:
    stream = io.StringIO()
    logs.configure(stream=stream)
    try:
        # The client's name (from client.id) is in every librdkafka line: an email there must come out redacted.
        settings = KafkaSettings(bootstrap_servers=f"127.0.0.1:{_free_port()}",
                                 client={"client.id": "marie@example.fr"})
        producer = Producer(kafka.producer_config(settings))
        deadline = time.monotonic() + 10
        lines: list[dict[str, Any]] = []
        while not lines and time.monotonic() < deadline:
            producer.poll(0.2)  # a client hands its log lines over when polled
            lines = [json.loads(line) for line in stream.getvalue().splitlines()
                     if json.loads(line).get("logger") == logs.LIBRDKAFKA]
    finally:
        structlog.reset_defaults()
        logs.configure()
    assert lines, stream.getvalue()
    assert "Connect to" in lines[0]["event"] and lines[0]["level"] == "error"
    assert "marie" not in stream.getvalue()


def test_store_connections_notice_a_dead_peer_by_themselves_and_the_url_keeps_its_own(pg_url: str) -> None:
    """statement_timeout is the server's to enforce: a server (or the route to it) that vanished leaves a read that
    only TCP can end, after about two hours by default. Keepalives and tcp_user_timeout end it in about 30 s, so a
    lost database takes the ordinary outage path (intake paused, /readyz, exit after store_outage_exit_seconds)."""
    engine = db.create_engine(pg_url)
    with engine.connect() as conn:
        params = conn.connection.driver_connection.info.get_parameters()  # type: ignore[union-attr]
    engine.dispose()
    assert (params.get("keepalives"), params.get("keepalives_idle"), params.get("keepalives_interval"),
            params.get("keepalives_count"), params.get("tcp_user_timeout")) == ("1", "10", "5", "3", "30000")
    own = db.create_engine(sa.make_url(pg_url).update_query_dict({"keepalives_idle": "60"})
                           .render_as_string(hide_password=False))
    with own.connect() as conn:
        assert conn.connection.driver_connection.info.get_parameters()["keepalives_idle"] == "60"  # type: ignore[union-attr]
    own.dispose()
