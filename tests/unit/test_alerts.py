"""The chart's alerts watch metrics the worker really exports, each links to a runbook section that
exists, and the runbook names only commands that exist; plus the outbox backlog behind one alert."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.unit.test_helm import ALL_ON, helm, one, render, render_error  # noqa: F401 - helm is a fixture
from worker import metrics, states
from worker.cli import cli
from worker.config import Topics
from worker.core.timefmt import utcnow
from worker.store import db, reports
from worker.store.repository import Store

ROOT = Path(__file__).resolve().parents[2]
RUNBOOK = ROOT / "docs" / "runbook.md"


@pytest.fixture(scope="module")
def rules(helm: str, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:  # noqa: F811
    docs = render(helm, tmp_path_factory.mktemp("alerts"), files=(ALL_ON,))
    rule = one(docs, "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    return [r for group in rule["spec"]["groups"] for r in group["rules"]]


def _exported_names() -> set[str]:
    """Every sample name /metrics can carry (counters add _total, histograms _bucket/_count/_sum)."""
    names = set()
    for family in metrics.REGISTRY.collect():
        names.add(family.name)
        names.update({f"{family.name}_total", f"{family.name}_bucket", f"{family.name}_count", f"{family.name}_sum"})
    return names


def test_every_alert_watches_an_exported_metric_of_this_release(rules: list[dict[str, Any]]) -> None:
    exported = _exported_names()
    assert {r["alert"] for r in rules} >= {"OubliRequestsOverdue", "OubliActionRequired", "OubliReceiptsNotPublished",
                                           "OubliWorkerDown"}
    for rule in rules:
        used = set(re.findall(r"\b(oubli_[a-z_]+)\b", rule["expr"]))
        assert used and used <= exported, (rule["alert"], used - exported)
        assert 'namespace="privacy"' in rule["expr"], rule["expr"]  # one release's workers, not every oubli
    failing = next(r for r in rules if r["alert"] == "OubliSystemFailing")
    assert 'code!~"throttled|quota_deferred"' in failing["expr"]  # our own waits are not failures


def test_every_alert_links_to_its_runbook_section(rules: list[dict[str, Any]]) -> None:
    headings = {h.strip().lower() for h in re.findall(r"^## (.+)$", RUNBOOK.read_text(), re.M)}
    for rule in rules:
        url = rule["annotations"]["runbook_url"]
        assert url.startswith("https://git.internal/privacy/oubli/-/blob/main/docs/runbook.md#"), url
        assert url.rsplit("#", 1)[1] in headings, rule["alert"]
    assert {r["alert"].lower() for r in rules} <= headings


def test_the_runbook_names_only_commands_that_exist() -> None:
    text = RUNBOOK.read_text()
    named = set(re.findall(r"\boubli ([a-z][a-z-]+)\b", text)) - {"runbook", "is"}
    assert {"requests", "status", "retry", "confirm", "migrate", "dlq"} <= named
    assert named <= set(cli.commands), sorted(named - set(cli.commands))
    for sub in re.findall(r"\boubli dlq ([a-z]+)\b", text):
        assert sub in cli.commands["dlq"].commands, sub  # type: ignore[attr-defined]


def test_the_alerts_workers_are_scraped_by_a_service_monitor(helm: str, tmp_path: Path) -> None:  # noqa: F811
    """The Operator ignores prometheus.io/* annotations: without a ServiceMonitor no alert could fire."""
    docs = render(helm, tmp_path, files=(ALL_ON,))
    monitor, service, deployment = one(docs, "ServiceMonitor"), one(docs, "Service"), one(docs, "Deployment")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"  # picked up like the rule
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["privacy"]}  # the alerts' namespace="privacy"
    labels = service["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    (port,) = service["spec"]["ports"]
    assert port["name"] == "metrics" and port["targetPort"] == "metrics"
    pod = deployment["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert [p["name"] for p in pod["spec"]["containers"][0]["ports"]] == ["metrics"]
    # Scraped once: no prometheus.io annotations besides the ServiceMonitor (sum(lag) would double).
    assert not [a for a in pod["metadata"]["annotations"] if a.startswith("prometheus.io/")]

    values = {"prometheusRule": {"enabled": True, "runbookBaseUrl": "https://x/runbook.md"}}
    assert one(render(helm, tmp_path, values), "ServiceMonitor")  # on whenever the rule is
    off = render(helm, tmp_path, {**values, "metrics": {"serviceMonitor": {"enabled": False}}})
    assert not [d for d in off if d["kind"] == "ServiceMonitor"]
    assert one(off, "Deployment")["spec"]["template"]["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    error = render_error(helm, tmp_path, {**values, "metrics": {"service": {"enabled": False}}})
    assert "metrics.serviceMonitor needs metrics.service.enabled" in error


def test_alerts_are_off_by_default_and_need_a_runbook_url(helm: str, tmp_path: Path) -> None:  # noqa: F811
    assert not [d for d in render(helm, tmp_path) if d["kind"] in ("PrometheusRule", "ServiceMonitor")]
    assert "runbookBaseUrl" in render_error(helm, tmp_path, {"prometheusRule": {"enabled": True}})


def test_the_outbox_backlog_gauges_count_what_waits_and_its_age(tmp_path: Path) -> None:
    engine = db.create_engine(f"sqlite:///{tmp_path / 'store.db'}")
    db.migrate(engine)
    store = Store(engine, topics=Topics(), policy=states.RetryPolicy(), actor="test")
    now = utcnow()
    assert reports.outbox_backlog(engine, now) == (0, 0.0)
    store.record_invalid(request_id="r-1", code="invalid_json", message="not JSON", raw=b"{", key=b"k",
                         headers=[], source="t/0/1", now=now - timedelta(minutes=7))
    pending, oldest = reports.outbox_backlog(engine, now)
    assert pending == 2  # the rejected receipt and the DLQ copy
    assert oldest == pytest.approx(420, abs=1)
    store.outbox.delete([record.id for record in store.outbox.batch(10)])
    assert reports.outbox_backlog(engine, now) == (0, 0.0)


def test_the_backlog_gauges_are_exported() -> None:
    metrics.OUTBOX_PENDING.set(3)
    metrics.OUTBOX_OLDEST.set(12.5)
    from prometheus_client import generate_latest

    samples = {s.name: s.value for f in text_string_to_metric_families(generate_latest(metrics.REGISTRY).decode())
               for s in f.samples}
    assert samples["oubli_outbox_pending"] == 3 and samples["oubli_outbox_oldest_seconds"] == 12.5
