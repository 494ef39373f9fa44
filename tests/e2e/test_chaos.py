"""Recovery in seconds under fire: 80 SIGKILLs at random instants while erasures and exports run across
all ten systems. Every request completes, with one distinct terminal receipt, and every system's effect
is applied once (what "once" means per system: ``devkit/chaos.py``). ``bench/chaos.py`` runs the same
scenario (200 kills by default) and prints the kill-to-completion times."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from devkit.chaos import Chaos

# The pace of the kills follows the workers' start-up (a second or two each): 80 keep the suite within
# its time budget (CI's 25 minutes; 120 took 145 s of it), and every kind of kill (early, mid-call, same
# or new worker_id) still happens dozens of times. bench/chaos.py runs 200.
KILLS = 80
REQUESTS = 60


# The kills take about two minutes; the suite's 300 s default would cut the wait for completion
# short on a busy machine, and hide which requests were left (chaos.verify names them).
@pytest.mark.timeout(600)
def test_sigkills_at_random_instants_over_all_ten_systems_lose_nothing_and_apply_each_effect_once(
    pg_url: str, pg_schema_urls: Any, kafka_bootstrap: str, s3_client: Any, s3_bucket: str, tmp_path: Path,
) -> None:
    chaos = Chaos(store_url=pg_url, new_schema=pg_schema_urls, kafka=kafka_bootstrap, s3=s3_client,
                  bucket=s3_bucket, workdir=tmp_path)
    try:
        report = chaos.run(kills=KILLS, requests=REQUESTS)
        print(report.summary())
        assert len(report.kills) == KILLS
        assert sum(len(k.held) for k in report.kills) > KILLS / 4, "the kills hardly ever hit a running task"
        assert report.restarts_same_id and report.restarts_same_id < KILLS, "both kinds of restart happen"
        chaos.verify(report)
    finally:
        chaos.close()
