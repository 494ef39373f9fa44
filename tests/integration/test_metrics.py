"""What /metrics serves: a partition's lag from its owner only, the process and build series, long call buckets."""

from __future__ import annotations

import time
from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from devkit.pipeline import raw_settings, settings_from
from worker import metrics
from worker.app import Worker


def _lag_partitions() -> set[str]:
    return {s.labels["partition"] for f in metrics.REGISTRY.collect() if f.name == "oubli_consumer_lag"
            for s in f.samples}


def _quiet_gauges(worker: Worker) -> Worker:
    worker.last_gauges = float("inf")  # the test refreshes them itself, for one worker only (one registry)
    return worker


def test_a_lag_series_leaves_the_worker_that_loses_its_partition(kafka_bootstrap: str, tmp_path: Path) -> None:
    raw = raw_settings(store_url=f"sqlite:///{tmp_path / 'store.db'}", bootstrap=kafka_bootstrap, systems={})
    settings = settings_from(raw)
    metrics.CONSUMER_LAG.clear()
    first = _quiet_gauges(Worker(settings, migrate=True, serve_http=False))
    second = None
    try:
        first.start()
        deadline = time.monotonic() + 30
        while len(first.assigned) < 6 and time.monotonic() < deadline:
            first.run_once()
        first._refresh_gauges()
        assert _lag_partitions() == {str(n) for n in range(6)}

        second = _quiet_gauges(Worker(settings, serve_http=False))
        second.start()
        deadline = time.monotonic() + 45
        while not (second.assigned and len(first.assigned) + len(second.assigned) == 6) \
                and time.monotonic() < deadline:
            first.run_once()
            second.run_once()
        assert second.assigned, "no rebalance happened"
        mine = {str(p.partition) for p in first.assigned}
        assert _lag_partitions() == mine, "the revoked partitions' series are gone before any refresh"
        first._refresh_gauges()
        assert _lag_partitions() == mine and len(mine) == 6 - len(second.assigned)
    finally:
        first.close()
        if second is not None:
            second.close()
    assert _lag_partitions() == set()  # leaving the group revokes everything


def test_metrics_carry_process_python_build_info_and_long_call_buckets() -> None:
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(metrics.REGISTRY).decode())}
    assert {"process_cpu_seconds", "process_resident_memory_bytes", "process_open_fds",
            "python_info", "python_gc_collections"} <= set(families)
    (build,) = families["oubli_build_info"].samples
    assert build.name == "oubli_build_info" and build.value == 1
    assert build.labels["version"] == metrics.VERSION != "" and build.labels["python"].startswith("3.")
    metrics.CALL_SECONDS.labels("slow_vendor").observe(200)
    buckets = {float(s.labels["le"]) for s in metrics.REGISTRY.collect() for s in s.samples
               if s.name == "oubli_system_call_seconds_bucket" and s.labels["system"] == "slow_vendor"}
    assert {10.0, 120.0, 300.0} <= buckets
    assert metrics.REGISTRY.get_sample_value("oubli_system_call_seconds_bucket",
                                             {"system": "slow_vendor", "le": "120.0"}) == 0
    assert metrics.REGISTRY.get_sample_value("oubli_system_call_seconds_bucket",
                                             {"system": "slow_vendor", "le": "300.0"}) == 1
