"""Out-of-range counts and timeouts are usage errors (exit 2) before anything is asked of the store or the broker.

Before, ``oubli requests --limit 100000000000000000000`` reached the store and exited 1 with "is its schema up
to date (oubli migrate)?", and ``oubli receipt R --timeout nan`` reached librdkafka and exited 4, "the broker is
unavailable". click's FloatRange would not have helped: nan compares false to both of its bounds."""

from __future__ import annotations

from pathlib import Path

import pytest

from devkit.pipeline import LocalStore, record

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


@pytest.mark.parametrize(("args", "code"), [
    (["status", "marie.dupont@example.fr"], 3),
    (["status", "+33612345678"], 3),
    (["retry", "marie.dupont@example.fr", "--by", "ops"], 3),
    (["requests", "--status", "marie.dupont@example.fr"], 2),
])
def test_an_error_line_does_not_echo_an_email_or_a_phone_number(tmp_path: Path, args: list[str], code: int) -> None:
    """A customer's address typed where a request id goes came back whole on stderr, which a Job's logs collect
    (the JSON log lines beside it are redacted). Request ids keep their shape."""
    local = LocalStore(tmp_path)
    result = local.oubli(*args)
    assert result.exit_code == code, result.output
    assert "marie.dupont@example.fr" not in result.output
    assert "33612345678" not in result.output
    assert "[redacted]" in result.output
    kept = local.oubli("status", "776237dc-6633-4122-b898-0d2b1f7b8a10")
    assert "no request 776237dc-6633-4122-b898-0d2b1f7b8a10" in kept.output


def test_a_bidi_override_in_a_request_id_is_shown_escaped_in_human_output(tmp_path: Path) -> None:
    """The schema lets format characters through an id: "rlo-\\u202etxt.exe" printed raw shows as "rlo-exe.txt" on a
    support agent's terminal. Error lines escaped it already; ``status`` and ``requests`` printed it as it came."""
    local = LocalStore(tmp_path)
    request_id = record(local.store, {"alpha": 3}, customer_id="C-RLO", request_id="rlo-\u202etxt.exe")
    for args in (["status", request_id, "--audit"], ["requests"]):
        result = local.oubli(*args)
        assert result.exit_code == 0, result.output
        assert "\u202e" not in result.output
        assert "rlo-\\u202etxt.exe" in result.output
    assert '"rlo-\\u202etxt.exe"' in local.oubli("status", request_id, "--json").output


@pytest.mark.parametrize("request_id", ["marie.dupont@example.fr", "+33612345678", "C-100234"])
def test_submit_refuses_a_request_id_the_worker_would_refuse_as_personal_data(tmp_path: Path, request_id: str) -> None:
    """The worker dead-letters such a command (a request id keys the receipts topic): submit published it anyway,
    or waited 30 s on a broker to say so, and echoed the id."""
    result = LocalStore(tmp_path).oubli("submit", "--kind", "erasure", "--customer-id", "C-100234",
                                        "--request-id", request_id)
    assert result.exit_code == 2, result.output
    assert "would be rejected" in result.output and "$.request_id" in result.output
    assert request_id not in result.output
