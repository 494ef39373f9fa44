"""``oubli report``: what the privacy team shows a regulator for a period (GDPR Art. 5(2), 12(3)).

For the requests received in ``[since, until)``: counts per kind, on time, late or overdue, how long
they took and what each system did; ``--requests`` adds one line per request (CSV or JSON). Reads
only the store and names subjects by ``subject_ref`` only; rejected commands are counted apart."""

from __future__ import annotations

import csv
import io
import json
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import click
import sqlalchemy as sa

from worker.core.csvcells import spreadsheet_safe
from worker.core.timefmt import aware, iso, parse, utcnow
from worker.receipts import is_internal
from worker.states import TERMINAL_STATUSES, RequestStatus
from worker.store import db
from worker.store.schema import requests, tasks
from worker.support import terminal_text


@dataclass(frozen=True)
class RequestLine:
    request_id: str
    kind: str
    subject_ref: str | None
    status: str
    requested_at: datetime | None
    due_at: datetime | None
    completed_at: datetime | None
    systems: tuple[tuple[str, str], ...]  # (system, outcome or state)

    def on_time(self) -> bool | None:
        """True/False once completed; None while open (see ``overdue``)."""
        if self.completed_at is None or self.status != RequestStatus.COMPLETED:
            return None
        return self.due_at is None or self.completed_at <= self.due_at

    def overdue(self, now: datetime) -> bool:
        return self.completed_at is None and self.due_at is not None and self.due_at < now

    def days_taken(self) -> float | None:
        if self.completed_at is None or self.requested_at is None or self.status != RequestStatus.COMPLETED:
            return None
        return (self.completed_at - self.requested_at).total_seconds() / 86400


@dataclass
class KindSummary:
    received: int = 0
    completed_on_time: int = 0
    completed_late: int = 0
    open: int = 0
    open_overdue: int = 0
    days_to_complete_median: float | None = None
    days_to_complete_max: float | None = None
    outcomes: dict[str, dict[str, int]] = field(default_factory=dict)  # system -> outcome -> count


@dataclass(frozen=True)
class Report:
    since: datetime
    until: datetime
    generated_at: datetime
    kinds: dict[str, KindSummary]
    rejected: dict[str, int]
    lines: list[RequestLine]

    def as_dict(self, *, with_requests: bool) -> dict[str, Any]:
        data: dict[str, Any] = {
            "since": iso(self.since), "until": iso(self.until), "generated_at": iso(self.generated_at),
            "kinds": {kind: asdict(summary) for kind, summary in self.kinds.items()}, "rejected": self.rejected,
        }
        if with_requests:
            data["requests"] = [_line_dict(line, self.generated_at) for line in self.lines]
        return data


def build(engine: sa.Engine, since: datetime, until: datetime, now: datetime) -> Report:
    lines = list(_lines(engine, since, until))
    rejected: Counter[str] = Counter()
    kinds: dict[str, KindSummary] = {}
    days: dict[str, list[float]] = defaultdict(list)
    for line in lines:
        if line.status == RequestStatus.REJECTED:
            continue
        summary = kinds.setdefault(line.kind, KindSummary())
        summary.received += 1
        on_time = line.on_time()
        summary.completed_on_time += on_time is True
        summary.completed_late += on_time is False
        if RequestStatus(line.status) not in TERMINAL_STATUSES:
            summary.open += 1
            summary.open_overdue += line.overdue(now)
        if (taken := line.days_taken()) is not None:
            days[line.kind].append(taken)
        for system, outcome in line.systems:
            per_system = summary.outcomes.setdefault(system, {})
            per_system[outcome] = per_system.get(outcome, 0) + 1
    for kind, durations in days.items():
        kinds[kind].days_to_complete_median = round(statistics.median(durations), 2)
        kinds[kind].days_to_complete_max = round(max(durations), 2)
    with engine.connect() as conn:
        for row in conn.execute(
            sa.select(requests.c.error_code, sa.func.count().label("n"))
            .where(requests.c.status == RequestStatus.REJECTED, requests.c.created_at >= since,
                   requests.c.created_at < until)
            .group_by(requests.c.error_code)
        ):
            rejected[row.error_code or "unknown"] = row.n
    kept = [line for line in lines if line.status != RequestStatus.REJECTED]
    return Report(since=since, until=until, generated_at=now, kinds=dict(sorted(kinds.items())),
                  rejected=dict(sorted(rejected.items())), lines=kept)


def _lines(engine: sa.Engine, since: datetime, until: datetime) -> Iterator[RequestLine]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(requests.c.request_id, requests.c.kind, requests.c.subject_ref, requests.c.status,
                      requests.c.requested_at, requests.c.due_at, requests.c.completed_at)
            .where(requests.c.requested_at >= since, requests.c.requested_at < until)
            .order_by(requests.c.requested_at, requests.c.seq)
        ).all()
        systems: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for start in range(0, len(rows), 500):  # bounded IN lists
            chunk = [row.request_id for row in rows[start:start + 500]]
            for task in conn.execute(sa.select(tasks.c.request_id, tasks.c.system, tasks.c.state, tasks.c.outcome)
                                     .where(tasks.c.request_id.in_(chunk)).order_by(tasks.c.system)):
                if not is_internal(task.system):
                    systems[task.request_id].append((task.system, task.outcome or task.state))
    for row in rows:
        yield RequestLine(
            request_id=row.request_id, kind=row.kind or "unknown", subject_ref=row.subject_ref, status=row.status,
            requested_at=_aware(row.requested_at), due_at=_aware(row.due_at), completed_at=_aware(row.completed_at),
            systems=tuple(systems[row.request_id]),
        )


def _aware(moment: datetime | None) -> datetime | None:
    return aware(moment) if moment is not None else None


def _line_dict(line: RequestLine, now: datetime) -> dict[str, Any]:
    return {
        "request_id": line.request_id, "kind": line.kind, "subject_ref": line.subject_ref, "status": line.status,
        "requested_at": iso(line.requested_at), "due_at": iso(line.due_at), "completed_at": iso(line.completed_at),
        "on_time": line.on_time(), "overdue": line.overdue(now),
        "systems": {system: outcome for system, outcome in line.systems},
    }


CSV_FIELDS: Sequence[str] = ("request_id", "kind", "subject_ref", "status", "requested_at", "due_at", "completed_at",
                             "on_time", "overdue", "systems")


def to_csv(report: Report) -> str:
    """One row per request; text cells a spreadsheet would evaluate are quoted (``worker.core.csvcells``)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(CSV_FIELDS), lineterminator="\n")
    writer.writeheader()
    for line in report.lines:
        row = _line_dict(line, report.generated_at)
        row["systems"] = "; ".join(f"{system}={outcome}" for system, outcome in line.systems)
        writer.writerow({k: spreadsheet_safe(v) if isinstance(v, str) else v for k, v in row.items()})
    return out.getvalue()


def to_text(report: Report) -> str:
    lines = [f"requests received {iso(report.since)} to {iso(report.until)} (as of {iso(report.generated_at)})"]
    if not report.kinds:
        lines.append("  none")
    for kind, s in report.kinds.items():
        timing = (f"median {s.days_to_complete_median} days, max {s.days_to_complete_max}"
                  if s.days_to_complete_median is not None else "none completed")
        lines.append(f"{kind}: {s.received} received; {s.completed_on_time} completed on time, {s.completed_late} "
                     f"late; {s.open} open ({s.open_overdue} overdue); {timing}")
        for system, outcomes in sorted(s.outcomes.items()):
            counts = ", ".join(f"{outcome} {n}" for outcome, n in sorted(outcomes.items()))
            lines.append(f"  {system:<18} {counts}")
    if report.rejected:
        lines.append("rejected commands: " + ", ".join(f"{code} {n}" for code, n in report.rejected.items()))
    return "\n".join(lines)


def _moment(value: str, name: str) -> datetime:
    try:
        return parse(value)
    except ValueError:
        raise click.BadParameter("use an ISO 8601 date or date-time, e.g. 2026-11-01", param_hint=name) from None


@click.command("report")
@click.option("--since", required=True, metavar="DATE", help="First day (inclusive), by requested_at.")
@click.option("--until", required=True, metavar="DATE", help="End (exclusive), by requested_at.")
@click.option("--requests", "with_requests", is_flag=True, help="Also one line per request.")
@click.option("--format", "output", type=click.Choice(["text", "json", "csv"]), default="text", show_default=True,
              help="csv lists the requests (one row each).")
@click.option("--json", "as_json", is_flag=True, help="Same as --format json (every command takes --json).")
@click.pass_context
def report(ctx: click.Context, since: str, until: str, with_requests: bool, output: str, as_json: bool) -> None:
    """Requests of a period for the privacy team: on time, late, open, and what each system did."""
    output = "json" if as_json else output
    start, end = _moment(since, "--since"), _moment(until, "--until")
    if end <= start:
        raise click.BadParameter("must be after --since", param_hint="--until")
    settings = ctx.obj["settings"]
    built = build(db.create_engine(settings.store_url), start, end, utcnow())
    if output == "csv":
        click.echo(to_csv(built), nl=False)
    elif output == "json":
        click.echo(json.dumps(built.as_dict(with_requests=with_requests), indent=2, sort_keys=True))
    else:
        click.echo(terminal_text(to_text(built)))
        if with_requests:  # for a person here, like the lines above: a request id may hold a bidi override
            click.echo(terminal_text(to_csv(built)), nl=False)
