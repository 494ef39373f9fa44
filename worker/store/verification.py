"""The store's side of verification: reopening a system whose erasure did not hold, tombstones, scan links.

The step works on a set of requests at once: ``task_rows`` reads all their tasks in one statement, and
``lay_tombstones`` buries every clean request's identifiers in one transaction with its audit events.
``reopen`` (one request whose erasure did not hold: rare) runs in one transaction with its audit events and
the receipt. A clean check's ``verified`` events go with the step's result (``TaskUpdate.verified``).
Tombstones hold only keyed hashes (``worker.core.identifiers``) and the request that erased them; ``matches``
looks a batch of hashes up by primary key. Links between a request and the resurrection erasure that followed
it are audit events on both requests.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from worker.states import SystemState
from worker.store.base import StoreBase
from worker.store.records import OPEN_STATUSES, TaskUpdate, task_state
from worker.store.schema import audit_events, requests, tombstones, verification_scans

VERIFICATION_FAILED = "verification_failed"
RESURRECTED_AS = "resurrected_as"
RESURRECTION_OF = "resurrection_of"
LOOKUP_BATCH = 1000  # hashes per IN (...) look-up


@dataclass(frozen=True)
class Tombstone:
    request_id: str
    subject_ref: str | None


@dataclass(frozen=True)
class Burial:
    """One clean erasure's tombstones: the keyed hashes (kind, digest) of its subject's identifiers."""

    request_id: str
    subject_ref: str | None
    hashes: Collection[tuple[str, str]]


@dataclass(frozen=True)
class ScanCounts:
    started_at: datetime
    finished_at: datetime
    dry_run: bool
    scanned: int
    found: int
    subjects: int
    emitted: int


class VerificationStore(StoreBase):
    # --- the verification step -----------------------------------------------------------------

    def task_rows(self, request_ids: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
        """Each request's task rows, by request (a request with none is absent), in one statement."""
        with self.engine.connect() as conn:
            return self._task_rows_of(conn, request_ids)

    def reopen(self, request_id: str, residues: Mapping[str, str], now: datetime) -> list[str]:
        """Turns each confirmed system of ``residues`` (system -> PII-free tables and counts) to ``failed``
        with ``verification_failed``, in one transaction with the audit events and the new receipt."""
        reopened: list[str] = []
        with self.engine.begin() as conn:
            request = self._open_request(conn, request_id)
            rows = self._task_rows(conn, request_id)
            for row in rows:
                if row["system"] not in residues or row["state"] != SystemState.CONFIRMED:
                    continue
                message = f"verification found data left after the erasure: {residues[row['system']]}"
                before = task_state(row)
                # Not a state-machine event: the system's confirmation itself is withdrawn, as a person
                # would after finding the data; `oubli retry` then runs the erasure (and the check) again.
                after = dataclasses.replace(before, state=SystemState.FAILED, outcome=None, confirmed_at=None,
                                            next_attempt_at=None, error_code=VERIFICATION_FAILED,
                                            error_message=message)
                row.update(self._write_task(conn, request_id, row["system"], row["version"], after, TaskUpdate()))
                self._audit(conn, request_id, row["system"], now, VERIFICATION_FAILED, from_state=before.state,
                            to_state=after.state, attempt=after.attempts, error_code=VERIFICATION_FAILED,
                            detail=residues[row["system"]])
                reopened.append(row["system"])
            if reopened:
                self._refresh_request(conn, request, now, rows=rows, force_receipt=True)
        return reopened

    def lay_tombstones(self, burials: Sequence[Burial], *, now: datetime, expires_at: datetime) -> None:
        """Lays each erasure's tombstones, in one transaction with a ``tombstoned`` audit event each. An
        identifier erased again points at its latest erasure; within ``burials``, at the last one that holds it."""
        burials = [b for b in burials if b.hashes]
        if not burials:
            return
        latest: dict[tuple[str, str], Burial] = {}
        for burial in burials:
            for pair in burial.hashes:
                latest[pair] = burial
        by_kind: dict[str, list[str]] = {}
        for kind, digest in sorted(latest):
            by_kind.setdefault(kind, []).append(digest)
        until = expires_at.date()
        with self.engine.begin() as conn:
            for kind, digests in by_kind.items():
                conn.execute(tombstones.delete().where(tombstones.c.kind == kind, tombstones.c.digest.in_(digests)))
            self._insert_many(conn, tombstones, [
                {"kind": kind, "digest": digest, "request_id": burial.request_id, "subject_ref": burial.subject_ref,
                 "created_at": now, "expires_at": expires_at} for (kind, digest), burial in sorted(latest.items())])
            self._insert_many(conn, audit_events, [
                self._audit_row(b.request_id, None, now, "tombstoned",
                                detail=f"{len(set(b.hashes))} identifiers kept as keyed hashes until {until}")
                for b in burials])

    # --- the resurrection scan -------------------------------------------------------------------

    def matches(self, hashes: Collection[tuple[str, str]], now: datetime) -> dict[tuple[str, str], Tombstone]:
        """The live tombstones among ``hashes`` (kind, digest)."""
        by_kind: dict[str, list[str]] = {}
        for kind, digest in set(hashes):
            by_kind.setdefault(kind, []).append(digest)
        found: dict[tuple[str, str], Tombstone] = {}
        with self.engine.connect() as conn:
            for kind, digests in by_kind.items():
                for start in range(0, len(digests), LOOKUP_BATCH):
                    rows = conn.execute(sa.select(tombstones.c.digest, tombstones.c.request_id,
                                                  tombstones.c.subject_ref).where(
                        tombstones.c.kind == kind, tombstones.c.digest.in_(digests[start:start + LOOKUP_BATCH]),
                        tombstones.c.expires_at > now))
                    for row in rows:
                        found[(kind, row.digest)] = Tombstone(row.request_id, row.subject_ref)
        return found

    def tombstone_count(self, now: datetime) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(tombstones)
                                    .where(tombstones.c.expires_at > now)).scalar_one())

    def purge_tombstones(self, now: datetime) -> int:
        """Deletes the tombstones past their retention period; returns how many."""
        with self.engine.begin() as conn:
            return int(conn.execute(tombstones.delete().where(tombstones.c.expires_at <= now)).rowcount)

    def resurrections(self, originals: Collection[str]) -> dict[str, tuple[int, bool]]:
        """Per original request: how many resurrection erasures followed it, and whether one is still
        open (or published and not yet recorded), in which case a scan must not send another."""
        found: dict[str, tuple[int, bool]] = {}
        with self.engine.connect() as conn:
            events = conn.execute(sa.select(audit_events.c.request_id, audit_events.c.detail).where(
                audit_events.c.action == RESURRECTED_AS, audit_events.c.request_id.in_(sorted(originals)))).all()
            later: dict[str, list[str]] = {}
            for event in events:
                later.setdefault(event.request_id, []).append((event.detail or "").split(":", 1)[0])
            done: set[str] = set()
            if events:
                new_ids = sorted({n for ids in later.values() for n in ids})
                done = set(conn.execute(sa.select(requests.c.request_id).where(
                    requests.c.request_id.in_(new_ids), requests.c.status.not_in(OPEN_STATUSES))).scalars())
        for original, new_ids in later.items():
            found[original] = (len(new_ids), any(n not in done for n in new_ids))
        return found

    def link_resurrection(self, original: str, new_request_id: str, where: str, now: datetime) -> None:
        """The audit trail's link, both ways: ``resurrected_as`` on the original request and ``resurrection_of``
        on the new one (recorded before intake takes the command in; the trail orders them by id)."""
        with self.engine.begin() as conn:
            self._audit(conn, original, None, now, RESURRECTED_AS, detail=f"{new_request_id}: found again in {where}")
            self._audit(conn, new_request_id, None, now, RESURRECTION_OF,
                        detail=f"{original}: erased by it, found again in {where}")

    def record_scan(self, counts: ScanCounts) -> None:
        with self.engine.begin() as conn:
            conn.execute(verification_scans.insert().values(**dataclasses.asdict(counts)))

    def last_scan(self) -> ScanCounts | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(verification_scans).where(verification_scans.c.dry_run.is_(False))
                               .order_by(verification_scans.c.id.desc()).limit(1)).mappings().first()
        if row is None:
            return None
        return ScanCounts(**{k: v for k, v in row.items() if k != "id"})
