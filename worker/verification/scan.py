"""The resurrection scan (``oubli verify``): rows of erased subjects that came back, erased again.

Each ``IdentifierSource`` system streams its rows; identifiers are hashed as tombstones are and looked
up in batches (flat memory). Per subject found again, one background erasure of every system is
published and linked both ways in the audit trail; a subject with one still open gets none. Findings
are counted, never shown."""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, time
from typing import Any, Protocol

import structlog

from worker import messages, support
from worker.core.connector import IdentifierSource, Sighting
from worker.core.errors import OubliError
from worker.core.identifiers import keyed_hash
from worker.core.timefmt import iso
from worker.retention.commands import EMAIL, ID, PHONE, fits, schema_problems, usable
from worker.store.verification import ScanCounts, Tombstone, VerificationStore

log = structlog.get_logger("oubli.verification")


@dataclass
class _Found:
    """An erased subject seen again. Holds personal data (the values found) in memory only."""

    subject_ref: str | None
    places: set[tuple[str, str]] = field(default_factory=set)
    values: dict[str, set[str]] = field(default_factory=dict)


@dataclass
class ScanReport:
    """Counts only: by system and table, never who."""

    started_at: datetime
    dry_run: bool
    tombstones: int = 0
    purged: int = 0  # tombstones past their retention period, deleted by this run
    scanned: int = 0  # rows and objects read
    found: dict[tuple[str, str], int] = field(default_factory=dict)  # (system, table) -> rows naming an erased subject
    subjects: int = 0  # erased subjects found again
    emitted: int = 0  # erasures acknowledged by the broker (a dry run: would be sent)
    skipped: int = 0  # subjects whose previous resurrection erasure is still open
    failed: int = 0  # erasures not acknowledged
    invalid: int = 0  # subjects found again that no valid command can name (every value found is unusable)
    dropped_identifiers: int = 0  # values found that command.v1 would refuse, left out of the erasures
    errors: dict[str, str] = field(default_factory=dict)  # system -> what failed (no values)
    finished_at: datetime | None = None

    @property
    def ok(self) -> bool:
        return not self.errors and not self.failed and not self.invalid

    def as_dict(self) -> dict[str, Any]:
        return {
            "started_at": iso(self.started_at), "finished_at": iso(self.finished_at), "dry_run": self.dry_run,
            "ok": self.ok, "tombstones": self.tombstones, "purged": self.purged, "scanned": self.scanned,
            "found": [{"system": s, "table": t, "rows": n} for (s, t), n in sorted(self.found.items())],
            "subjects": self.subjects, "emitted": self.emitted, "skipped": self.skipped, "failed": self.failed,
            "invalid": self.invalid, "dropped_identifiers": self.dropped_identifiers,
            "errors": [{"system": s, "error": e} for s, e in sorted(self.errors.items())],
        }


class Publisher(Protocol):
    """What the scan needs of ``worker.support.CommandPublisher``."""

    def publish(self, command: Mapping[str, Any], done: Callable[[bool], None]) -> None: ...

    def flush(self) -> int: ...


class Scan:
    def __init__(self, store: VerificationStore, *, tombstone_key: bytes, subject_key: bytes,
                 clock: Callable[[], datetime], requested_by: str = "resurrection-scan", batch: int = 5000) -> None:
        self.store = store
        self.key = tombstone_key
        self.subject_key = subject_key
        self.clock = clock
        self.requested_by = requested_by
        self.batch = batch

    def run(self, sources: Mapping[str, IdentifierSource], publisher: Publisher | None) -> ScanReport:
        """Scans every source, then publishes (``publisher`` None: a dry run, which changes nothing)."""
        report = ScanReport(started_at=self.clock(), dry_run=publisher is None)
        if publisher is not None:
            report.purged = self.store.purge_tombstones(report.started_at)
        report.tombstones = self.store.tombstone_count(report.started_at)
        subjects: dict[str, _Found] = {}
        if report.tombstones:
            for system, source in sorted(sources.items()):
                try:
                    self._scan(system, source.sightings(), report, subjects)
                except OubliError as exc:  # the connector's errors name the system and step, never a value
                    report.errors[system] = exc.message
        report.subjects = len(subjects)
        if subjects:
            self._erase_again(subjects, report, publisher)
        report.finished_at = self.clock()
        if publisher is not None:  # a dry run changes nothing, not even the gauges' record
            self.store.record_scan(ScanCounts(report.started_at, report.finished_at, report.dry_run, report.scanned,
                                              sum(report.found.values()), report.subjects, report.emitted))
        log.info("resurrection_scan_finished", **{k: v for k, v in report.as_dict().items() if k != "found"},
                 found_rows=sum(report.found.values()))
        return report

    def _scan(self, system: str, sightings: Iterable[Sighting], report: ScanReport,
              subjects: dict[str, _Found]) -> None:
        batch: list[Sighting] = []
        for sighting in sightings:
            batch.append(sighting)
            if len(batch) >= self.batch:
                self._match(system, batch, report, subjects)
                batch = []
        if batch:
            self._match(system, batch, report, subjects)

    def _match(self, system: str, batch: list[Sighting], report: ScanReport, subjects: dict[str, _Found]) -> None:
        report.scanned += len(batch)
        hashed = [[(kind, value, keyed_hash(self.key, kind, value)) for kind, value in s.identifiers] for s in batch]
        live = self.store.matches({(kind, digest) for pairs in hashed for kind, _, digest in pairs}, self.clock())
        for sighting, pairs in zip(batch, hashed, strict=True):
            hits: list[tuple[str, str, Tombstone]] = [(kind, value, live[(kind, digest)])
                                                       for kind, value, digest in pairs if (kind, digest) in live]
            if not hits:
                continue
            place = (system, sighting.table)
            report.found[place] = report.found.get(place, 0) + 1
            for kind, value, tombstone in hits:
                found = subjects.setdefault(tombstone.request_id, _Found(tombstone.subject_ref))
                found.places.add(place)
                found.values.setdefault(kind, set()).add(value.strip())

    def _erase_again(self, subjects: dict[str, _Found], report: ScanReport, publisher: Publisher | None) -> None:
        history = self.store.resurrections(subjects)
        sent: list[tuple[str, str, str, list[bool]]] = []
        for original, found in sorted(subjects.items()):
            count, open_ = history.get(original, (0, False))
            if open_:
                report.skipped += 1
                continue
            command, dropped = self._command(original, count, found)
            report.dropped_identifiers += dropped
            if command is None or schema_problems(command):
                report.invalid += 1  # the same data gives the same answer every run: a person must act
                continue
            where = ", ".join(f"{s}.{t}" for s, t in sorted(found.places))
            if publisher is None:
                report.emitted += 1
                continue
            acked: list[bool] = []
            publisher.publish(command, acked.append)
            sent.append((original, command["request_id"], where, acked))
        if publisher is None:
            return
        publisher.flush()
        now = self.clock()
        for original, request_id, where, acked in sent:
            if acked == [True]:
                report.emitted += 1
                self.store.link_resurrection(original, request_id, where, now)
            else:
                report.failed += 1

    def _command(self, original: str, count: int, found: _Found) -> tuple[dict[str, Any] | None, int]:
        """The erasure, or None when no value found can go into one; and how many values were left out."""
        found_ids = {v.strip() for v in found.values.get("customer_id", ())} - {""}
        ids = sorted(v for v in found_ids if fits(v, ID))
        emails, dropped_emails = usable(sorted(found.values.get("email", ())), EMAIL)
        phones, dropped_phones = usable(sorted(found.values.get("phone", ())), PHONE)
        dropped = len(found_ids) - len(ids) + dropped_emails + dropped_phones
        if not (ids or emails or phones):  # a pseudonym alone would erase nothing and report it done
            return None, dropped
        # Known only by email or phone (a re-imported newsletter entry): a stable pseudonymous id.
        pseudonym = "anon-" + messages.keyed_digest(self.subject_key, "resurrection:" + original)[:32]
        customer_id = ids[0] if ids else pseudonym
        where = ", ".join(f"{s}.{t}" for s, t in sorted(found.places))
        # The same run of the same data gives the same command, so an interrupted run that is started
        # again the same day sends a duplicate the worker ignores, never a conflicting one.
        day = datetime.combine(self.clock().date(), time(), tzinfo=self.clock().tzinfo)
        namespace = uuid.UUID(bytes=hmac.new(self.subject_key, b"oubli/resurrection/request-id/v1",
                                             hashlib.sha256).digest()[:16])
        command = support.build_command(
            kind="erasure", customer_id=customer_id, emails=emails, phones=phones, requested_by=self.requested_by,
            reason=f"resurrection scan: the subject of erasure {original} was found again in {where}"[:1000],
            request_id=str(uuid.uuid5(namespace, f"{original}:{count}")), requested_at=day,
        )
        command["priority"] = "background"
        return command, dropped
