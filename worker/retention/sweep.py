"""One sweep: every rule in turn, its expired subjects in batches, one erasure command each.

``sweep`` blocks on the rules' databases and on Kafka. A rule that fails (its database is down, a
configured column is missing) is reported with an error and the next rule still runs. Nothing here
logs or returns personal data: only counts per rule.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

import structlog
from confluent_kafka import KafkaException

from worker.config import RetentionRule, Settings
from worker.core.errors import ConfigError, OubliError
from worker.core.limits import Capacity
from worker.core.timefmt import iso
from worker.planning import SystemCost, sweep_cost
from worker.retention import sources
from worker.retention.commands import erasure, schema_problems, subject_problems
from worker.retention.sources import Databases, Expired, Period
from worker.support import CommandPublisher

log = structlog.get_logger("oubli.retention")
BATCH = 500  # subjects per look-up of `unless` checks and contact details


@dataclass
class RuleReport:
    """Counts only. ``expired`` = ``kept`` + ``invalid`` + ``emitted`` + ``failed``."""

    rule: str
    expired: int = 0  # subjects past the period (as far as the scan went: see ``limited``)
    kept: int = 0  # kept by an ``unless`` check
    # No valid command.v1 can name the subject (its customer id, or the email that is its key, is not one
    # the schema accepts): nothing is sent for it, every run, until a person fixes the data.
    invalid: int = 0
    emitted: int = 0  # acknowledged by the broker (a dry run: would be emitted)
    failed: int = 0  # not acknowledged
    dropped_identifiers: int = 0  # emails and phones command.v1 would refuse, left out of commands
    limited: bool = False  # --limit stopped the rule: more has expired
    # Per system with keeps_data_days: erasures it will confirm without a call (the subject's last
    # activity is older than what the system keeps), so they cost none of its quota.
    without_call: dict[str, int] = field(default_factory=dict)
    error: str | None = None


@dataclass
class SweepReport:
    as_of: datetime
    dry_run: bool
    rules: list[RuleReport]
    costs: list[SystemCost] = field(default_factory=list)  # per rate- or quota-limited system

    @property
    def ok(self) -> bool:
        return all(r.error is None and r.failed == 0 and r.invalid == 0 for r in self.rules)

    def as_dict(self) -> dict[str, Any]:
        return {"as_of": iso(self.as_of), "dry_run": self.dry_run, "ok": self.ok,
                "rules": [asdict(r) for r in self.rules], "costs": [asdict(c) for c in self.costs]}


def sweep(settings: Settings, *, as_of: datetime, dry_run: bool = False, limit: int | None = None,
          timeout: float = 120.0, max_per_run: int | None = None,
          capacities: Mapping[str, Capacity] | None = None) -> SweepReport:
    """Emits one erasure per expired subject and rule (at most ``limit`` per rule, ``max_per_run`` in
    all); ``dry_run`` only counts. ``capacities`` (the limited systems') price the emission."""
    secret = settings.signing_secret.get_secret_value().encode() if settings.signing_secret else None
    publisher = None if dry_run else CommandPublisher(settings.kafka, signing_secret=secret, timeout=timeout)
    databases = Databases(settings.systems)
    reports = []
    left = max_per_run
    try:
        for rule in settings.retention.rules:
            report = RuleReport(rule.name)
            reports.append(report)
            if left is not None and left <= 0:  # the run's budget is spent: the next run starts here
                report.limited = True
                continue
            cap = left if limit is None else limit if left is None else min(limit, left)
            run = _RuleRun(rule, settings, databases, publisher, report, as_of, cap)
            try:
                run.scan()
            except OubliError as exc:  # database and config errors name the system and step, never a value
                report.error = exc.message
            except KafkaException as exc:
                report.error = f"publishing failed: {exc}"
            if publisher is not None:
                publisher.flush()
                report.failed = run.sent - report.emitted
            if left is not None:
                left -= run.sent
            log.info("retention_rule_swept", dry_run=dry_run, **asdict(report))
            if report.invalid:  # counted by rule, never named: the log and the output carry no value
                log.warning("retention_subjects_invalid", rule=rule.name, invalid=report.invalid)
    finally:
        if publisher is not None:
            publisher.flush()
        databases.close()
    tasks, free = _tasks(settings, reports)
    return SweepReport(as_of, dry_run, reports, sweep_cost(tasks, capacities or {}, free))


def _tasks(settings: Settings, reports: list[RuleReport]) -> tuple[dict[str, int], dict[str, int]]:
    """The system tasks the emitted commands create (one per command and system it targets), and
    how many of them the system confirms without a call."""
    tasks: dict[str, int] = {}
    free: dict[str, int] = {}
    for rule, report in zip(settings.retention.rules, reports, strict=True):
        for system in rule.systems or tuple(settings.systems):
            tasks[system] = tasks.get(system, 0) + report.emitted
            free[system] = free.get(system, 0) + min(report.without_call.get(system, 0), report.emitted)
    return tasks, free


class _RuleRun:
    def __init__(self, rule: RetentionRule, settings: Settings, databases: Databases,
                 publisher: CommandPublisher | None, report: RuleReport, as_of: datetime, limit: int | None) -> None:
        self.rule, self.databases, self.publisher, self.report = rule, databases, publisher, report
        self.as_of, self.limit, self.sent = as_of, limit, 0
        self.subject_key = settings.subject_key.get_secret_value().encode()
        self.grace_days = rule.grace_days if rule.grace_days is not None else settings.retention.grace_days
        self.systems = settings.systems
        self.period: Period = rule.period.resolve(settings.systems[rule.source].settings)

    def scan(self) -> None:
        table = self.databases.table(self.rule.source, self.rule.table)
        engine = self.databases.engine(self.rule.source)
        with sources.guard(self.rule.source, "retention scan"), engine.connect() as conn:
            for batch in _batches(sources.stream_expired(conn, table, self.rule, self.as_of, self.period)):
                if not self._emit(batch):
                    break

    def _emit(self, batch: list[Expired]) -> bool:
        """False once the limit is reached."""
        keys = [e.key for e in batch]
        kept: set[str] = set()
        for check in self.rule.unless:
            kept |= sources.kept(self.databases, self.rule, check, keys, self.as_of, self.period)
        contacts = sources.contacts(self.databases, self.rule, [k for k in keys if k not in kept])
        for expired in batch:
            if self.limit is not None and self.sent >= self.limit:
                self.report.limited = True
                return False
            self.report.expired += 1
            if expired.key in kept:
                self.report.kept += 1
                continue
            emails, phones = contacts[expired.key]
            command, dropped = erasure(self.rule, subject_key=self.subject_key, key=expired.key, expired_at=expired.at,
                                       requested_at=sources.expires_at(expired, self.period), emails=emails,
                                       phones=phones, grace_days=self.grace_days)
            self.report.dropped_identifiers += dropped
            problems = schema_problems(command) if command is not None else []
            if problems and not subject_problems(problems):  # the rule's own fields: every command would fail
                raise ConfigError(f"retention rule {self.rule.name} builds invalid commands: {problems[0]}")
            if command is None or problems:  # this subject's data only: the rule carries on with the others
                self.report.invalid += 1
                continue
            self.sent += 1
            self._count_without_call(expired)
            if self.publisher is None:
                self.report.emitted += 1
            else:
                self.publisher.publish(command, self._delivered)
        return True

    def _count_without_call(self, expired: Expired) -> None:
        if self.rule.expires_when != "all_rows":  # only these commands carry the last activity
            return
        idle = self.as_of - expired.at
        for system in self.rule.systems or tuple(self.systems):
            keeps = self.systems[system].keeps_data_days
            if keeps is not None and idle > timedelta(days=keeps):
                self.report.without_call[system] = self.report.without_call.get(system, 0) + 1

    def _delivered(self, ok: bool) -> None:
        if ok:
            self.report.emitted += 1


def _batches(expired: Iterator[Expired]) -> Iterator[list[Expired]]:
    batch: list[Expired] = []
    for item in expired:
        batch.append(item)
        if len(batch) >= BATCH:
            yield batch
            batch = []
    if batch:
        yield batch
