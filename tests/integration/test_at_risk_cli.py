"""``oubli requests --at-risk``: from the store's backlog and a limited system's configured quota,
which open requests will miss their due date, and why; on SQLite, with no vendor call."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import yaml
from click.testing import CliRunner

from devkit.pipeline import raw_settings
from tests.scheduling import days, seed
from worker import states
from worker.cli import cli
from worker.config import Topics
from worker.core.timefmt import utcnow
from worker.store import db
from worker.store.repository import Store

GA = {"connector": "google_analytics", "concurrency": 2, "settings": {
    "base_url": "http://127.0.0.1:9/analytics/v3", "allow_insecure_http": True, "property_id": "123456",
    "daily_quota": 10, "background_share": 0.5, "quota_timezone": "UTC",
    "oauth": {"client_id": "c", "client_secret": "s", "refresh_token": "r", "token_url": "http://127.0.0.1:9/token"}}}


def test_at_risk_lists_the_requests_a_quota_cannot_serve_in_time(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    engine = db.create_engine(url)
    db.migrate(engine)
    store = Store(engine, topics=Topics(), policy=states.RetryPolicy(), actor="test")
    now = utcnow()
    # 5 a day for background work, in four quota days: those after the due date (5 to 10, by the time of day) are late.
    seed(store, [(f"sweep-{i:02d}", now + days(1.5)) for i in range(20)], system="google_analytics", now=now)
    config = tmp_path / "oubli.yaml"
    config.write_text(yaml.safe_dump(raw_settings(store_url=url, bootstrap="127.0.0.1:1",
                                                  systems={"google_analytics": GA, "loyalty": {
                                                      "connector": "devkit.fakes", "settings": {"url": url}}})))
    result = CliRunner().invoke(cli, ["--config", str(config), "requests", "--at-risk", "--json"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["limited_systems"] == ["google_analytics"] and report["open"] == 20
    late = [r for r in report["requests"] if r["late"]]
    assert 5 <= report["at_risk"] == len(late) <= 10 and report["requests"][0]["late"]
    assert late[0]["reason"].startswith("google_analytics: ") and "5/day for background work" in late[0]["reason"]
    human = CliRunner().invoke(cli, ["--config", str(config), "requests", "--at-risk", "--limit", "3"],
                               catch_exceptions=False)
    assert human.exit_code == 0 and "AT RISK" in human.output
    assert f"{report['at_risk']} of 20 open requests at google_analytics will miss their due date" in human.output


def test_the_loops_gauges_count_the_requests_at_risk_per_limited_system(tmp_path: Path) -> None:
    from tests.scheduling import MutableClock, QuotaVendor
    from worker import metrics, planning

    url = f"sqlite:///{tmp_path / 'store.db'}"
    engine = db.create_engine(url)
    db.migrate(engine)
    store = Store(engine, topics=Topics(), policy=states.RetryPolicy(), actor="test")
    now = utcnow()
    seed(store, [(f"sweep-{i:02d}", now - days(1)) for i in range(7)], system="google_analytics", now=now)
    vendor = QuotaVendor("google_analytics", engine, MutableClock(now), daily_quota=10, share=0.5, calls=[],
                         lock=threading.Lock())
    gauges = planning.Gauges({"google_analytics": vendor})  # type: ignore[dict-item]
    gauges.refresh(engine, now)
    assert metrics.AT_RISK.labels("google_analytics")._value.get() == 7  # already past due: every one is late
    assert metrics.BACKLOG_DAYS.labels("google_analytics", "background")._value.get() == 7 / 5
    assert metrics.BACKLOG_DAYS.labels("google_analytics", "standard")._value.get() == 0
