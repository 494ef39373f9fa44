"""The store's side of a lost export staging: the systems whose staged files are gone export again.

An export is confirmed once its system staged its files, and packaged only when every system of the
request confirmed. If staged files vanish in between (a lifecycle rule, a store that lost them), the
package step must not publish a package without them: ``restage`` moves those systems back to
``retrying`` through the state machine, in one transaction with the audit events and the receipt, and the
package step, a final step, waits for them again (``worker.store.claims``).
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from worker import states
from worker.states import SystemState
from worker.store.base import StoreBase
from worker.store.records import TaskUpdate, task_state


class Restage(StoreBase):
    def restage(self, request_id: str, systems: Collection[str], message: str, now: datetime) -> list[str]:
        """Turns each confirmed system of ``systems`` back to ``retrying`` (``export_staging_lost``); returns them."""
        event = states.StagingLost(message)
        redone: list[str] = []
        with self.engine.begin() as conn:
            request = self._open_request(conn, request_id)
            rows = self._task_rows(conn, request_id)
            for row in rows:
                # Only what this worker exported: a person's manual confirmation is not undone here.
                exported = row["state"] == SystemState.CONFIRMED and row["outcome"] != "manually_confirmed"
                if row["system"] not in systems or not exported:
                    continue
                before = task_state(row)
                after = states.transition(before, event, now, self.policy)
                row.update(self._write_task(conn, request_id, row["system"], row["version"], after, TaskUpdate()))
                self._audit(conn, request_id, row["system"], now, "staginglost", from_state=before.state,
                            to_state=after.state, attempt=after.attempts, error_code=after.error_code, detail=message)
                redone.append(row["system"])
            if redone:
                self._refresh_request(conn, request, now, rows=rows, force_receipt=True)
        return redone
