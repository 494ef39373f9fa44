"""Every log event name oubli emits, declared once with its meaning (as ``metrics.py`` does for metrics).

A log call names its event with a string literal from this table (``log.warning("outbox_lease_lost")``);
``tests/unit/test_logevents.py`` fails on a name that is used but not declared here, or declared but
never used. Events carry ids, codes, counts and error types only, never personal data.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

EVENTS: Final[Mapping[str, str]] = {
    # The worker's life (worker.loop)
    "worker_started": "the worker is up: store migrated, connectors built, consuming next",
    "worker_draining": "a stop was asked: intake stops, running calls get the drain budget",
    "worker_stopped": "the worker stopped; what was still running and the budget left",
    "worker_giving_up": "the store or a loop step stalled past its limit: the process exits to be restarted",
    "worker_stuck": "the main loop has not turned for store_outage_exit_seconds (a store gone silent): exit 4",
    "partitions_assigned": "the group gave this worker command partitions",
    "partitions_revoked": "the group took partitions back; their offsets were committed first",
    "consumer_error": "the Kafka consumer reported an error (usually transient: the client retries)",
    "offset_commit_failed": "committing consumed offsets failed; the commands are redelivered and deduplicated",
    "loop_step_failed": "a loop step (claim, relay, reclaim...) failed on a bug; retried after a pause",
    "intake_failed": "intake failed on something other than the store; the message is retried after a pause",
    "store_unavailable": "the store is unreachable: intake is paused and rewound, steps wait",
    "store_available": "the store answers again after an outage; intake resumes",
    # Intake (worker.intake)
    "command_recorded": "a command was recorded with its targets: a duplicate or a replay at info, a new one at debug",
    "commands_recorded": "one intake transaction recorded a batch of commands: how many, and of each outcome",
    "intake_batch_refused": "the store refused a batch for its data: its commands are recorded one at a time",
    "command_rejected": "a command failed validation: rejected receipt and/or DLQ",
    "command_poison": "a message could not be handled at all and goes to the DLQ",
    "headers_unreadable": "a message's headers could not be decoded: it is taken in without them",
    "record_unreadable": "the Kafka client cannot read a record batch (a compression bomb): its end is sought, "
                         "then every record of it is dead-lettered and skipped",
    "unreadable_batch_skipped": "every record of an unreadable batch is dead-lettered: the partition goes on past it",
    "dead_letter_failed": "writing a message to the DLQ failed; it is retried, never skipped",
    "dead_letter_redelivered": "a dead-lettered record came again (crash before its offset commit): no 2nd DLQ row",
    # Executor (worker.executor)
    "system_call_finished": "one connector call ended: a failure, retry or pending at info, a confirmation at debug",
    "calls_recorded": "the results of one harvest were recorded in one transaction: how many of each kind",
    "call_abandoned": "a call ran past worker.call_timeout_seconds: recorded as a retryable call_timeout, its "
                      "slot freed; the thread stays until the call returns, and its late result is dropped",
    "connector_bug": "a connector raised an unexpected exception; treated as retryable",
    "disk_full": "a call ran out of space on the worker's disk (ENOSPC or EDQUOT): retried like an outage; free "
                 "space or grow the volume",
    "leases_reclaimed": "tasks whose worker's lease expired were taken back",
    "leases_handed_back": "at shutdown, calls still running after the drain: their leases end in seconds, so "
                          "another worker takes them over at once",
    "leases_not_handed_back": "at shutdown, the store was unreachable: the leases of calls still running expire "
                              "after worker.lease_seconds instead",
    "worker_id_in_use": "another live worker holds this worker id's leases",
    "held_turns_released": "a subject's next request was still held after the one ahead of it ended (a race "
                           "between two workers' transactions): its tasks are released now (worker.store.turns)",
    "blocked_tasks_released": "tasks were still blocked though every sibling they wait for had confirmed (a store "
                              "write that did not keep them in step: a bug to report); released now, late by up to "
                              "15 s (worker.store.order)",
    "unconfigured_tasks_failed": "tasks of systems no longer in config.systems waited due past "
                                 "worker.unconfigured_grace_seconds: failed not_configured, their requests "
                                 "action_required (worker.store.unconfigured)",
    "background_deferred": "background work spent its share of a system's daily quota: its other waiting tasks "
                           "there move to the next window (worker.store.deferrals)",
    # Outbox relay (worker.outbox, worker.refusals)
    "outbox_lease_lost": "another worker took the relay lease; this one stops publishing",
    "outbox_produce_failed": "producing an outbox batch failed; it is sent again",
    "outbox_commit_failed": "committing the relay's transaction failed; the batch is sent again",
    "outbox_publish_incomplete": "some records of a batch were not acknowledged; the batch is sent again",
    "outbox_record_isolated": "the broker refused a batch: its first refused record is sent alone",
    "outbox_record_dropped": "a receipt the broker refuses for itself was dropped (the store keeps the truth)",
    "dlq_record_replaced_by_reference": "a DLQ record the broker refuses was replaced by a small stand-in",
    "outbox_abort_on_drop_failed": "aborting the open transaction of a producer being replaced failed (harmless: "
                                   "a fenced one refuses, a new producer's init_transactions aborts it)",
    # Rate limits (worker.store.ratelimits)
    "rate_limits_unavailable": "the store's shared rate limits are unreachable; the local limits apply",
    # Retention sweep (worker.retention)
    "retention_rule_swept": "one retention rule was swept (counts only)",
    "retention_subjects_invalid": "a rule's expired subjects no valid command can name, left for a person (a count)",
    # Verification and the resurrection scan (worker.verification)
    "verified": "an erasure's verification found nothing left in any checked system; tombstones laid (counts; at "
                "debug, as the audit trail has it)",
    "verification_failed": "an erasure's verification found data left: those systems reopened as failed",
    "resurrection_scan_finished": "oubli verify ended: rows scanned, rows and subjects found again, erasures sent",
    # Web callbacks (worker.web)
    "web_callback_refused": "a vendor callback was refused (bad signature, too old...)",
    "web_callback_failed": "a vendor callback could not be handled now; the vendor retries",
    "web_callback_answered": "a vendor callback was handled",
    "web_callback_needs_person": "a callback's customer cannot go into a valid command: answered, not published; "
                                 "a person erases it (the request id, never the value; see docs/runbook.md)",
    "web_callback_more_accounts": "a callback's Facebook id is linked to more than one customer account: the first "
                                  "is being erased, a person erases the others (docs/runbook.md)",
    "web_unexpected_error": "oubli web met an error it does not expect (a bug): answered 500 without detail",
}
