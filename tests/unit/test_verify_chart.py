"""The chart's resurrection scan: a locked-down CronJob running `oubli verify`, the tombstone key only as a
Secret reference, the worker's config accepting what the chart renders, and an alert for any resurrection."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.unit.test_helm import ALL_ON, helm, one, render, render_error  # noqa: F401 - helm is a fixture
from worker import config

VALUES: dict[str, Any] = {
    "verify": {"enabled": True, "schedule": "5 5 * * *", "args": ["--dry-run"]},
    "config": {"verification": {"enabled": True, "tombstone_key": "${OUBLI_TOMBSTONE_KEY}", "tombstone_days": 730}},
}


def test_the_verify_cronjob_runs_oubli_verify_locked_down(helm: str, tmp_path: Path) -> None:  # noqa: F811
    docs = render(helm, tmp_path, VALUES)
    cron = one(docs, "CronJob", "oubli-verify")
    assert cron["spec"]["schedule"] == "5 5 * * *" and cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert (container["command"], container["args"]) == (["oubli"], ["verify", "--dry-run"])
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["automountServiceAccountToken"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    rendered = yaml.safe_load(one(docs, "ConfigMap", "oubli")["data"]["oubli.yaml"])
    settings = config.build(rendered, env={"OUBLI_TOMBSTONE_KEY": "t" * 32, "OUBLI_SUBJECT_KEY": "s" * 32,
                                           "OUBLI_DB_PASSWORD": "x"})
    assert settings.verification.enabled and settings.verification.tombstone_days == 730


def test_off_by_default_and_the_tombstone_key_is_never_a_literal(helm: str, tmp_path: Path) -> None:  # noqa: F811
    assert not [d for d in render(helm, tmp_path) if d["kind"] == "CronJob"]
    error = render_error(helm, tmp_path, {"config": {"verification": {"tombstone_key": "a-literal-secret-value"}}})
    assert "tombstone_key" in error


def test_an_alert_fires_on_any_resurrection(helm: str, tmp_path: Path) -> None:  # noqa: F811
    rule = one(render(helm, tmp_path, files=(ALL_ON,)), "PrometheusRule")
    alerts = {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"]}
    assert alerts["OubliPersonalDataResurrected"]["expr"].startswith("max(oubli_resurrection_scan_subjects{")
    assert alerts["OubliPersonalDataResurrected"]["expr"].endswith("> 0")
