"""The support CLI against the real broker and store: submit, receipt, status, retry, confirm."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner

from tests.pipeline import Receipts, raw_settings, run_until, settings_from
from worker.app import Worker
from worker.cli import cli


def test_support_commands_with_human_and_json_output(pg_url: str, kafka_bootstrap: str, tmp_path: Path) -> None:
    systems: dict[str, Any] = {
        "alpha": {"connector": "tests.fakes", "settings": {"url": pg_url}},
        "beta": {"connector": "tests.fakes", "settings": {"url": pg_url, "permanent": True}},
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
