"""Task claims: which due tasks a worker may start, within every system's limit across all workers.

A claim is a version compare-and-set plus a lease, so two workers can never both run one task. On
PostgreSQL the claims of one system queue on an advisory lock, which makes the running-task count
that the limit is checked against exact across workers.

Recovery in seconds (SPEC invariant 11): the lease is short and its holder renews it while the call
runs, so another worker takes a dead worker's task within one lease. A dead worker's own restart
(same ``worker_id``: in Kubernetes, the pod's name survives a container restart) does better: it
reclaims its leases at once, see ``reclaim_own_leases``. Expired leases are offered before any
other due task, so a backlog never hides them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Mapping
from datetime import datetime, timedelta

import sqlalchemy as sa

from worker import receipts, states
from worker.states import SystemState
from worker.store.base import StoreBase
from worker.store.records import OPEN_STATUSES, ClaimedTask, TaskUpdate, subject_of, task_state
from worker.store.schema import requests, tasks


def _lock_key(name: str) -> int:
    """A stable signed 64-bit key for a PostgreSQL advisory lock."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


class Claims(StoreBase):
    def claim_due(self, *, now: datetime, lease_until: datetime, limits: Mapping[str, int],
                  room: int, held: Collection[tuple[str, str]] = ()) -> list[ClaimedTask]:
        """Claims up to ``room`` due tasks, keeping each system's running tasks, across every worker,
        within ``limits[system]``.

        Expired leases come first (their work was due before anything still waiting), then the rest,
        oldest due first. ``held`` are (request_id, system) pairs whose calls this worker still has in
        flight: never claimed again here, even if their lease ran out while the store was unreachable.
        """
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(tasks.c.system, sa.func.count().label("n"))
                                .where(*self._live_running(now)).group_by(tasks.c.system))
            running = {row.system: row.n for row in rows}
        wanted = {s: min(room, limit - running.get(s, 0)) for s, limit in limits.items()}
        wanted = {s: n for s, n in wanted.items() if n > 0}
        if not wanted or room <= 0:
            return []
        earlier_open = sa.select(sa.literal(1)).select_from(requests.alias("earlier")).where(
            sa.literal_column("earlier.subject_ref") == requests.c.subject_ref,
            sa.literal_column("earlier.seq") < requests.c.seq,
            sa.literal_column("earlier.status").in_(OPEN_STATUSES),
        )
        sibling = tasks.alias("sibling")
        unconfirmed_sibling = sa.select(sa.literal(1)).select_from(sibling).where(
            sibling.c.request_id == tasks.c.request_id, sibling.c.system.not_in(list(receipts.FINAL_TASKS)),
            sibling.c.state != SystemState.CONFIRMED,
        )
        unresolved_identity = sa.select(sa.literal(1)).select_from(sibling).where(
            sibling.c.request_id == tasks.c.request_id, sibling.c.system == receipts.IDENTITY_TASK,
            sibling.c.state != SystemState.CONFIRMED,
        )
        due = sa.or_(
            sa.and_(tasks.c.state.in_([s.value for s in states.CLAIMABLE]), tasks.c.next_attempt_at <= now),
            sa.and_(tasks.c.state == SystemState.RUNNING, tasks.c.lease_expires_at < now),
        )
        query = (
            sa.select(tasks.c.request_id, tasks.c.system, tasks.c.version)
            .join(requests, requests.c.request_id == tasks.c.request_id)
            .where(due, tasks.c.system.in_(list(wanted)), ~sa.exists(earlier_open),
                   sa.or_(tasks.c.system.not_in(list(receipts.FINAL_TASKS)), ~sa.exists(unconfirmed_sibling)),
                   sa.or_(tasks.c.system == receipts.IDENTITY_TASK, ~sa.exists(unresolved_identity)))
            # A running task has no next_attempt_at (NULL sorts last on PostgreSQL): rank it first.
            .order_by(sa.case((tasks.c.state == SystemState.RUNNING, 0), else_=1), tasks.c.next_attempt_at,
                      tasks.c.request_seq)
            .limit(sum(wanted.values()) * 4)
        )
        with self.engine.connect() as conn:
            candidates = conn.execute(query).all()
        claimed: list[ClaimedTask] = []
        for row in candidates:
            if wanted.get(row.system, 0) <= 0 or len(claimed) >= room or (row.request_id, row.system) in held:
                continue
            task = self._claim(row.request_id, row.system, row.version, now, lease_until, limits[row.system])
            if task is not None:
                claimed.append(task)
                wanted[row.system] -= 1
        return claimed

    @staticmethod
    def _live_running(now: datetime) -> tuple[sa.ColumnElement[bool], ...]:
        return (tasks.c.state == SystemState.RUNNING, tasks.c.lease_expires_at >= now)

    def _claim(self, request_id: str, system: str, version: int, now: datetime,
               lease_until: datetime, limit: int) -> ClaimedTask | None:
        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                # Claims of one system queue up across workers, so the count below is exact.
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _lock_key(f"claim:{system}")})
                busy = conn.execute(sa.select(sa.func.count()).select_from(tasks).where(
                    *self._live_running(now), tasks.c.system == system)).scalar_one()
                if busy >= limit:
                    return None
            request = self._lock_request(conn, request_id)
            rows = self._task_rows(conn, request_id)
            row = next(r for r in rows if r["system"] == system)
            if row["version"] != version or request["subject_json"] is None:
                return None
            before = task_state(row)
            current = before
            if current.state is SystemState.RUNNING:  # its worker died mid-call
                current = states.transition(current, states.LeaseExpired(), now, self.policy)
                self._audit(conn, request_id, system, now, "lease_expired", from_state=before.state,
                            to_state=current.state, attempt=current.attempts, error_code=current.error_code)
                if current.state not in states.CLAIMABLE:  # it died under this call too often: a person looks
                    row.update(self._write_task(conn, request_id, system, version, current, TaskUpdate()))
                    self._refresh_request(conn, request, now, rows=rows, force_receipt=True)
                    return None
            after = states.transition(current, states.Claim(), now, self.policy)
            claim = {"state": after.state, "attempts": after.attempts, "next_attempt_at": None,
                     "lease_losses": after.lease_losses,
                     "lease_owner": self.actor, "lease_expires_at": lease_until, "version": version + 1}
            updated = conn.execute(
                tasks.update().where(tasks.c.request_id == request_id, tasks.c.system == system,
                                     tasks.c.version == version).values(**claim)
            ).rowcount
            if updated != 1:
                return None
            row.update(claim)
            self._audit(conn, request_id, system, now, "claimed", from_state=current.state, to_state=after.state,
                        attempt=after.attempts)
            self._refresh_request(conn, request, now, rows=rows)
            return ClaimedTask(
                request_id=request_id, system=system, kind=request["kind"],
                subject=subject_of(request_id, request["subject_json"]),
                polling=current.state is SystemState.WAITING_VENDOR, vendor_ref=row["vendor_ref"],
                attempt=after.attempts, version=version + 1,
            )

    def renew_leases(self, claimed: Iterable[ClaimedTask], lease_until: datetime) -> int:
        """Extends the leases this worker still holds; returns how many. A lost lease (the version
        moved on) stays lost: that call's result will not be recorded either."""
        renewed = 0
        with self.engine.begin() as conn:
            for task in claimed:
                renewed += conn.execute(tasks.update().where(
                    tasks.c.request_id == task.request_id, tasks.c.system == task.system,
                    tasks.c.version == task.version, tasks.c.lease_owner == self.actor,
                ).values(lease_expires_at=lease_until)).rowcount
        return renewed

    def reclaim_own_leases(self, now: datetime) -> int:
        """Ends, at once, the leases held under this worker's id: they belong to a dead incarnation.

        Call it only at start-up, before this process claims anything, and only while holding the
        worker's identity lock (``worker.store.identity``): that lock proves no other live process
        uses this id, so nothing can still be running these tasks. The version moves on too, so even
        a process that lost its identity lock could no longer record or renew them. The tasks are
        then claimed again like any expired lease (audited ``lease_expired``), ahead of the backlog.
        """
        with self.engine.begin() as conn:
            return conn.execute(tasks.update().where(
                tasks.c.state == SystemState.RUNNING, tasks.c.lease_owner == self.actor,
            ).values(lease_expires_at=now - timedelta(seconds=1), version=tasks.c.version + 1)).rowcount
