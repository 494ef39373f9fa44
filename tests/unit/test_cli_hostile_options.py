"""Out-of-range counts and timeouts are usage errors (exit 2) before anything is asked of the store or the broker.

Before, ``oubli requests --limit 100000000000000000000`` reached the store and exited 1 with "is its schema up
to date (oubli migrate)?", and ``oubli receipt R --timeout nan`` reached librdkafka and exited 4, "the broker is
unavailable". click's FloatRange would not have helped: nan compares false to both of its bounds."""

from __future__ import annotations

from pathlib import Path

import pytest

from devkit.pipeline import LocalStore

HOSTILE = {
    "requests --limit past a bigint": ["requests", "--limit", str(10 ** 20)],
    "requests --limit zero": ["requests", "--limit", "0"],
    "receipt --timeout nan": ["receipt", "r-1", "--timeout", "nan"],
    "receipt --timeout inf": ["receipt", "r-1", "--timeout", "inf"],
    "receipt --timeout negative": ["receipt", "r-1", "--timeout", "-1"],
    "receipt --timeout zero": ["receipt", "r-1", "--timeout", "0"],
    "receipt --timeout text": ["receipt", "r-1", "--timeout", "soon"],
    "dlq summary --timeout nan": ["dlq", "summary", "--timeout", "nan"],
    "dlq replay --timeout inf": ["dlq", "replay", "--dry-run", "--timeout", "inf"],
    "verify --timeout nan": ["verify", "--dry-run", "--timeout", "nan"],
    "sweep --timeout nan": ["sweep", "--dry-run", "--timeout", "nan"],
    "sweep --limit past a bigint": ["sweep", "--dry-run", "--limit", str(10 ** 20)],
    "topics --partitions negative": ["topics", "--partitions", "-1"],
    "topics --replication zero": ["topics", "--replication", "0"],
}


@pytest.mark.parametrize("args", list(HOSTILE.values()), ids=list(HOSTILE))
def test_an_out_of_range_option_is_a_usage_error(tmp_path: Path, args: list[str]) -> None:
    result = LocalStore(tmp_path).oubli(*args)
    assert result.exit_code == 2, result.output
    assert "Invalid value for" in result.output
    assert "Traceback" not in result.output


def test_the_largest_count_and_a_day_long_timeout_are_accepted(tmp_path: Path) -> None:
    local = LocalStore(tmp_path)
    assert local.oubli("requests", "--limit", "1000000").exit_code == 0
    assert local.oubli("receipt", "--help").exit_code == 0
