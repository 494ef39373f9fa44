"""Tasks of a system no worker runs any more: failed ``not_configured``, so that a person looks at them.

Claims only consider the systems a worker is configured for. A system removed from ``config.systems`` (the
retailer stopped using the vendor) would leave its waiting tasks unclaimed for good: the request open
forever, and every later request of its subject held behind it (SPEC invariant 7). ``fail_unconfigured``
fails them, as the state machine's ``Unconfigured`` event, in one transaction with their audit events, the
requests' derived statuses (``action_required``) and one receipt per request, in bulk as a harvest does.

Only after a grace: during a rolling deploy that adds a system, the old workers do not know it while the new
ones already run it. A task counts as unconfigured once it has been due (or its lease expired) for longer
than the grace, which must outlast a rollout. Held tasks wait their turn, not a worker: they are left alone
until it comes. Cost when nothing is unconfigured: an index probe per system that has waiting tasks.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from worker import receipts, states
from worker.core.timefmt import aware
from worker.states import SystemState
from worker.store.base import StoreBase, dicts, task_values
from worker.store.records import StoreConflict, TaskUpdate, task_state
from worker.store.schema import CLAIM_INDEX_PREDICATE, RUNNING_PREDICATE, audit_events, outbox, requests, tasks
from worker.store.sets import among

# Tasks failed per transaction: the next sweep takes the rest.
UNCONFIGURED_BATCH = 1000
_TASK_COLUMNS = ("state", "attempts", "next_attempt_at", "error_code", "error_message", "waiting_since",
                 "lease_losses", "lease_owner", "lease_expires_at", "version")


def _present(predicate: str) -> sa.TextClause:
    """The distinct systems of the tasks ``predicate`` selects, by a loose scan of an index led by ``system``
    (one probe per system, not one row per task): a recursive query on both stores."""
    return sa.text(f"""
WITH RECURSIVE present(system) AS (
    SELECT min(system) FROM tasks WHERE {predicate}
    UNION ALL
    SELECT (SELECT min(t.system) FROM tasks AS t WHERE t.{predicate} AND t.system > present.system)
    FROM present WHERE present.system IS NOT NULL
)
SELECT system FROM present WHERE system IS NOT NULL
""")  # noqa: S608 - the schema's own index predicates; no value is formatted in


# Each predicate is the one of its index, word for word, so that PostgreSQL and SQLite both use it (``held`` and
# ``blocked`` unqualified in the inner select are ``t``'s: ``present`` has no such columns).
_WAITING_SYSTEMS = _present(CLAIM_INDEX_PREDICATE)
_RUNNING_SYSTEMS = _present(RUNNING_PREDICATE)


class Unconfigured(StoreBase):
    def fail_unconfigured(self, configured: Collection[str], *, now: datetime,
                          grace: timedelta) -> list[tuple[str, str]]:
        """Fails the tasks of systems not in ``configured`` that have waited due, unclaimed, for longer than
        ``grace`` (or whose lease ran out that long ago); returns their (request_id, system) pairs.

        A task running under a live lease is never touched. Rows another transaction holds are skipped (the
        next sweep takes them). ``configured`` must hold every system this worker claims, internal steps too.
        """
        cutoff = now - grace
        with self.engine.begin() as conn:
            waiting = self._orphaned_systems(conn, _WAITING_SYSTEMS, configured)
            running = self._orphaned_systems(conn, _RUNNING_SYSTEMS, configured)
            if not waiting and not running:
                return []
            candidates = self._orphan_candidates(conn, waiting, running, cutoff)
            if not candidates:
                return []
            return self._fail_orphans(conn, candidates, now, cutoff, configured)

    @staticmethod
    def _orphaned_systems(conn: sa.Connection, statement: sa.TextClause, configured: Collection[str]) -> list[str]:
        # oubli's own steps (``_package``, ``_identity``, ``_verify``) are never a vendor that was dropped.
        present = set(conn.execute(statement).scalars())
        return sorted(s for s in present - set(configured) if not receipts.is_internal(s))

    @staticmethod
    def _orphan_candidates(conn: sa.Connection, waiting: list[str], running: list[str],
                           cutoff: datetime) -> list[tuple[str, str]]:
        pairs: list[tuple[str, str]] = []
        if waiting:
            pairs += [(r[0], r[1]) for r in conn.execute(
                sa.select(tasks.c.request_id, tasks.c.system)
                .where(tasks.c.system.in_(waiting), sa.text(f"tasks.{CLAIM_INDEX_PREDICATE}"),
                       tasks.c.next_attempt_at <= cutoff)
                .order_by(tasks.c.request_seq).limit(UNCONFIGURED_BATCH))]
        if running:
            pairs += [(r[0], r[1]) for r in conn.execute(
                sa.select(tasks.c.request_id, tasks.c.system)
                .where(tasks.c.system.in_(running), tasks.c.state == SystemState.RUNNING,
                       tasks.c.lease_expires_at <= cutoff)
                .order_by(tasks.c.request_seq).limit(UNCONFIGURED_BATCH))]
        return pairs

    @staticmethod
    def _still_orphaned(row: dict[str, Any], cutoff: datetime, configured: Collection[str]) -> bool:
        """The candidate's condition, again on the locked row: it may have moved on meanwhile."""
        if row["system"] in configured or receipts.is_internal(row["system"]):
            return False
        state = SystemState(row["state"])
        if state is SystemState.RUNNING:
            return row["lease_expires_at"] is not None and aware(row["lease_expires_at"]) <= cutoff
        return state in states.CLAIMABLE and not row["held"] and not row["blocked"] \
            and row["next_attempt_at"] is not None and aware(row["next_attempt_at"]) <= cutoff

    def _fail_orphans(self, conn: sa.Connection, candidates: list[tuple[str, str]], now: datetime,
                      cutoff: datetime, configured: Collection[str]) -> list[tuple[str, str]]:
        wanted = set(candidates)
        ids = sorted({request_id for request_id, _ in candidates})
        # The request locks, in request_id order as a harvest takes them, skipping any held now: a claim and a
        # harvest lock the request too, so nothing else writes these tasks until the end of this transaction.
        locked = {r["request_id"]: r for r in dicts(conn.execute(
            sa.select(requests).where(among(conn, requests.c.request_id, ids))
            .order_by(requests.c.request_id).with_for_update(skip_locked=True)))}
        if not locked:
            return []
        rows_of: dict[str, list[dict[str, Any]]] = {}
        for row in dicts(conn.execute(sa.select(tasks).where(among(conn, tasks.c.request_id, sorted(locked)))
                                      .order_by(tasks.c.request_id, tasks.c.system))):
            rows_of.setdefault(row["request_id"], []).append(row)
        written: list[dict[str, Any]] = []
        audits: list[dict[str, Any]] = []
        failed: list[tuple[str, str]] = []
        for request_id, rows in rows_of.items():
            for row in rows:
                if (request_id, row["system"]) not in wanted or not self._still_orphaned(row, cutoff, configured):
                    continue
                before = current = task_state(row)
                if current.state is SystemState.RUNNING:  # its worker died mid-call, and nothing runs it since
                    current = states.transition(current, states.LeaseExpired(), now, self.policy)
                    audits.append(self._audit_row(request_id, row["system"], now, "lease_expired",
                                                  from_state=before.state, to_state=current.state,
                                                  attempt=current.attempts, error_code=current.error_code))
                after = current
                if current.state in states.CLAIMABLE:
                    event = states.Unconfigured(_message(row["system"], now - cutoff))
                    after = states.transition(current, event, now, self.policy)
                    audits.append(self._audit_row(request_id, row["system"], now, "unconfigured",
                                                  from_state=current.state, to_state=after.state,
                                                  attempt=after.attempts, error_code=after.error_code,
                                                  detail=after.error_message))
                version = row["version"]
                row.update(task_values(version, after, TaskUpdate()))
                written.append({**row, "_version": version})
                failed.append((request_id, row["system"]))
        if not written:
            return []
        count = self._update_many(conn, tasks, ("request_id", "system"), _TASK_COLUMNS, written, guard="version")
        if count != len(written):  # cannot happen under the request locks
            raise StoreConflict("a task changed while its request was locked")
        updated: list[dict[str, Any]] = []
        outbox_rows: list[dict[str, Any]] = []
        for request_id in sorted({request_id for request_id, _ in failed}):
            request, rows = locked[request_id], rows_of[request_id]
            # A failed task makes the request action_required, never terminal: no personal data to purge here,
            # and no subject's turn to release (the request stays open until a person retries or confirms).
            status = states.request_status((SystemState(r["state"]) for r in rows),
                                           any_attempted=any(r["attempts"] > 0 for r in rows))
            values = {**request, "updated_at": now, "status": status}
            if status != request["status"]:
                audits.append(self._audit_row(request_id, None, now, "status_changed",
                                              from_state=request["status"], to_state=status))
            updated.append(values)
            outbox_rows.append(self._receipt_row(values, rows, now))
        self._update_many(conn, requests, ("request_id",), ("status", "updated_at"), updated)
        self._insert_many(conn, audit_events, audits)
        self._insert_many(conn, outbox, outbox_rows)
        return failed


def _message(system: str, grace: timedelta) -> str:
    minutes = grace.total_seconds() / 60
    return (f"system {system} is not configured on any worker: its task waited {minutes:g} minutes "
            "(worker.unconfigured_grace_seconds) and none took it. Add the system back and retry, or confirm "
            "by hand what was done there")
