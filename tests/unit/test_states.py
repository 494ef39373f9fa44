"""The state machine, exhaustively: every event in every state is either a listed transition or illegal."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from worker import states
from worker.states import RequestStatus, SystemState, TaskState

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
NO_JITTER = states.RetryPolicy(base_seconds=2, max_seconds=60, jitter=lambda ceiling: ceiling)

EVENTS: dict[str, states.Event] = {
    "claim": states.Claim(),
    "confirm": states.Confirm("erased"),
    "await": states.AwaitVendor("job-1", poll_after=30),
    "fail_retryable": states.Fail("retryable", "HTTP 503", retryable=True, retry_after=None),
    "fail_permanent": states.Fail("permanent", "HTTP 403", retryable=False),
    "throttled": states.Fail("throttled", "rate limit", retryable=True, retry_after=0.5, counts_as_attempt=False),
    "lease_expired": states.LeaseExpired(),
    "staging_lost": states.StagingLost("export: staged files of alpha are gone; they export again"),
    "unconfigured": states.Unconfigured("system beta is not configured on any worker"),
    "operator_retry": states.OperatorRetry(),
    "operator_confirm": states.OperatorConfirm(),
}

S = SystemState
LEGAL: dict[tuple[SystemState, str], SystemState] = {
    (S.PENDING, "claim"): S.RUNNING,
    (S.RETRYING, "claim"): S.RUNNING,
    (S.WAITING_VENDOR, "claim"): S.RUNNING,
    (S.RUNNING, "confirm"): S.CONFIRMED,
    (S.RUNNING, "await"): S.WAITING_VENDOR,
    (S.RUNNING, "fail_retryable"): S.RETRYING,
    (S.RUNNING, "fail_permanent"): S.FAILED,
    (S.RUNNING, "throttled"): S.RETRYING,
    (S.RUNNING, "lease_expired"): S.RETRYING,
    (S.CONFIRMED, "staging_lost"): S.RETRYING,
    **{(state, "unconfigured"): S.FAILED for state in (S.PENDING, S.RETRYING, S.WAITING_VENDOR)},
    (S.FAILED, "operator_retry"): S.PENDING,
    (S.RETRYING, "operator_retry"): S.PENDING,
    (S.WAITING_VENDOR, "operator_retry"): S.PENDING,
    **{(state, "operator_confirm"): S.CONFIRMED for state in SystemState if state is not S.CONFIRMED},
}


@pytest.mark.parametrize(("state", "event_name"), list(itertools.product(SystemState, EVENTS)))
def test_every_event_in_every_state(state: SystemState, event_name: str) -> None:
    task = TaskState(state=state, attempts=1, max_attempts=5)
    expected = LEGAL.get((state, event_name))
    if expected is None:
        with pytest.raises(states.IllegalTransition):
            states.transition(task, EVENTS[event_name], NOW, NO_JITTER)
    else:
        assert states.transition(task, EVENTS[event_name], NOW, NO_JITTER).state is expected


def test_claim_counts_an_attempt_but_a_vendor_poll_does_not() -> None:
    assert states.transition(TaskState(), states.Claim(), NOW, NO_JITTER).attempts == 1
    waiting = TaskState(state=S.WAITING_VENDOR, attempts=1)
    assert states.transition(waiting, states.Claim(), NOW, NO_JITTER).attempts == 1


def test_backoff_grows_exponentially_up_to_the_cap() -> None:
    delays = []
    for attempts in range(1, 8):
        task = TaskState(state=S.RUNNING, attempts=attempts, max_attempts=10)
        after = states.transition(task, EVENTS["fail_retryable"], NOW, NO_JITTER)
        assert after.next_attempt_at is not None
        delays.append((after.next_attempt_at - NOW).total_seconds())
    assert delays == [2, 4, 8, 16, 32, 60, 60]


def test_jitter_never_goes_below_retry_after() -> None:
    zero_jitter = states.RetryPolicy(base_seconds=2, max_seconds=60, jitter=lambda ceiling: 0.0)
    task = TaskState(state=S.RUNNING, attempts=1)
    after = states.transition(task, states.Fail("retryable", "429", retryable=True, retry_after=120), NOW, zero_jitter)
    assert after.next_attempt_at == NOW + timedelta(seconds=120)
    floor = states.transition(task, EVENTS["fail_retryable"], NOW, zero_jitter)
    assert floor.next_attempt_at == NOW + timedelta(seconds=1)  # half the base: never a hot loop


def test_retries_run_out_into_failed() -> None:
    task = TaskState(state=S.RUNNING, attempts=5, max_attempts=5)
    after = states.transition(task, EVENTS["fail_retryable"], NOW, NO_JITTER)
    assert (after.state, after.error_code, after.next_attempt_at) == (S.FAILED, "retries_exhausted", None)


def test_throttling_gives_the_attempt_back_and_waits_exactly_as_asked() -> None:
    task = TaskState(state=S.RUNNING, attempts=5, max_attempts=5)
    after = states.transition(task, EVENTS["throttled"], NOW, NO_JITTER)
    assert (after.state, after.attempts) == (S.RETRYING, 4)
    assert after.next_attempt_at == NOW + timedelta(seconds=0.5)


def test_operator_retry_resets_the_attempt_budget_and_confirm_records_the_outcome() -> None:
    failed = TaskState(state=S.FAILED, attempts=8, error_code="permanent")
    retried = states.transition(failed, states.OperatorRetry(), NOW, NO_JITTER)
    assert (retried.attempts, retried.next_attempt_at) == (0, NOW)
    confirmed = states.transition(failed, states.OperatorConfirm(), NOW, NO_JITTER)
    assert (confirmed.outcome, confirmed.confirmed_at, confirmed.error_code) == ("manually_confirmed", NOW, None)


WAIT = timedelta(days=14)
POLICY_14D = states.RetryPolicy(base_seconds=2, max_seconds=60, jitter=lambda ceiling: ceiling, vendor_wait=WAIT)
SUBMITTED = NOW - timedelta(days=3)


@pytest.mark.parametrize("state", list(SystemState))
@pytest.mark.parametrize("waited", [None, timedelta(0), WAIT - timedelta(seconds=1), WAIT, WAIT + timedelta(days=30)])
def test_a_vendor_job_unfinished_past_the_deadline_fails_the_task(state: SystemState, waited: timedelta | None) -> None:
    """Every state, with no wait yet, a fresh one, one just short of and one at or past the deadline."""
    since = None if waited is None else NOW - waited
    task = TaskState(state=state, attempts=1, vendor_ref="job-1", waiting_since=since)
    event = states.AwaitVendor("job-1", poll_after=30)
    if state is not S.RUNNING:
        with pytest.raises(states.IllegalTransition):
            states.transition(task, event, NOW, POLICY_14D)
        return
    after = states.transition(task, event, NOW, POLICY_14D)
    assert after.waiting_since == (since or NOW), "the wait counts from the first time it waited"
    if waited is not None and waited >= WAIT:
        assert (after.state, after.error_code, after.next_attempt_at) == (S.FAILED, "vendor_wait_expired", None)
        assert after.error_message == "the vendor job was still unfinished 14 days after it was submitted"
        assert states.request_status([after.state, S.CONFIRMED], any_attempted=True) is RequestStatus.ACTION_REQUIRED
    else:
        assert (after.state, after.error_code) == (S.WAITING_VENDOR, None)
        assert after.next_attempt_at == NOW + timedelta(seconds=30)


def test_the_wait_survives_polls_failures_and_resubmissions_and_ends_when_settled() -> None:
    waiting = states.transition(TaskState(state=S.RUNNING, attempts=1), EVENTS["await"], SUBMITTED, POLICY_14D)
    assert waiting.waiting_since == SUBMITTED
    polled = states.transition(states.transition(waiting, states.Claim(), NOW, POLICY_14D), EVENTS["await"], NOW,
                               POLICY_14D)
    assert polled.waiting_since == SUBMITTED
    # A failed poll waits to poll the same job again (a vendor that forgot it has it submitted again, by the
    # connector's poll): still the same wait.
    failed = states.transition(states.transition(polled, states.Claim(), NOW, POLICY_14D),
                               EVENTS["fail_retryable"], NOW, POLICY_14D)
    assert (failed.state, failed.waiting_since, failed.vendor_ref) == (S.WAITING_VENDOR, SUBMITTED, polled.vendor_ref)
    resubmitted = states.transition(states.transition(failed, states.Claim(), NOW, POLICY_14D),
                                    states.AwaitVendor("job-2", 30), SUBMITTED + WAIT, POLICY_14D)
    assert (resubmitted.state, resubmitted.error_code) == (S.FAILED, "vendor_wait_expired")
    retried = states.transition(resubmitted, states.OperatorRetry(), NOW, POLICY_14D)
    assert retried.waiting_since is None, "an operator's retry starts a new wait"
    confirmed = states.transition(states.transition(polled, states.Claim(), NOW, POLICY_14D), EVENTS["confirm"], NOW,
                                  POLICY_14D)
    assert confirmed.waiting_since is None
    manual = states.transition(polled, states.OperatorConfirm(), NOW, POLICY_14D)
    assert manual.waiting_since is None


def test_a_lease_lost_while_polling_polls_the_same_job_again() -> None:
    polling = TaskState(state=S.RUNNING, attempts=1, vendor_ref="job-1", waiting_since=SUBMITTED)
    after = states.transition(polling, states.LeaseExpired(), NOW, NO_JITTER)
    assert (after.state, after.vendor_ref, after.next_attempt_at, after.error_code) == (
        S.WAITING_VENDOR, "job-1", NOW, "lease_expired")
    again = states.transition(after, states.Claim(), NOW, NO_JITTER)
    assert again.attempts == 1, "polling is not an attempt"
    calling = TaskState(state=S.RUNNING, attempts=8, max_attempts=8)
    lost = states.transition(calling, states.LeaseExpired(), NOW, NO_JITTER)
    assert (lost.state, lost.attempts) == (S.RETRYING, 7), "a dead worker does not use up the system's retries"
    assert states.transition(lost, states.Claim(), NOW, NO_JITTER).attempts == 8


def test_a_failed_poll_polls_again_after_the_backoff_and_counts_until_the_attempts_run_out() -> None:
    task = TaskState(state=S.WAITING_VENDOR, attempts=1, max_attempts=3, vendor_ref="job-1", waiting_since=SUBMITTED)
    limited = states.Fail("vendor_rate_limited", "HTTP 429", retryable=True, retry_after=600)
    after = states.transition(states.transition(task, states.Claim(), NOW, NO_JITTER), limited, NOW, NO_JITTER)
    assert (after.state, after.vendor_ref, after.attempts, after.error_code) == (
        S.WAITING_VENDOR, "job-1", 2, "vendor_rate_limited")
    assert after.next_attempt_at == NOW + timedelta(seconds=600), "Retry-After is a floor"
    assert states.request_status([after.state], any_attempted=True) is RequestStatus.IN_PROGRESS
    last = states.transition(states.transition(after, states.Claim(), NOW, NO_JITTER), limited, NOW, NO_JITTER)
    assert (last.state, last.error_code, last.attempts) == (S.FAILED, "retries_exhausted", 3)
    refused = states.transition(states.transition(task, states.Claim(), NOW, NO_JITTER), EVENTS["fail_permanent"],
                                NOW, NO_JITTER)
    assert refused.state is S.FAILED, "a permanent answer to a poll needs a person, as before"


@pytest.mark.parametrize("polling", [False, True])
def test_a_call_that_stops_its_worker_every_time_fails_after_the_limit_not_forever(polling: bool) -> None:
    policy = states.RetryPolicy(base_seconds=2, max_seconds=60, jitter=lambda ceiling: ceiling, max_lease_losses=3)
    task = TaskState(attempts=0, max_attempts=8)
    if polling:
        task = TaskState(state=S.WAITING_VENDOR, attempts=1, vendor_ref="job-1", waiting_since=SUBMITTED)
    for losses in (1, 2):
        task = states.transition(states.transition(task, states.Claim(), NOW, policy), states.LeaseExpired(), NOW,
                                 policy)
        assert (task.state in CLAIMABLE_STATES, task.lease_losses) == (True, losses)
    running = states.transition(task, states.Claim(), NOW, policy)
    failed = states.transition(running, states.LeaseExpired(), NOW, policy)
    assert (failed.state, failed.error_code, failed.lease_losses) == (S.FAILED, "worker_lost_repeatedly", 3)
    assert states.request_status([failed.state], any_attempted=True) is RequestStatus.ACTION_REQUIRED
    # An operator's retry starts the count again; so does any call that returns.
    assert states.transition(failed, states.OperatorRetry(), NOW, policy).lease_losses == 0
    for event in (EVENTS["confirm"], EVENTS["await"], EVENTS["fail_retryable"], EVENTS["throttled"]):
        assert states.transition(running, event, NOW, policy).lease_losses == 0


CLAIMABLE_STATES = states.CLAIMABLE


@pytest.mark.parametrize("combo", list(itertools.product(SystemState, repeat=2)))
def test_request_status_is_derived_from_its_tasks(combo: tuple[SystemState, SystemState]) -> None:
    for attempted in (False, True):
        status = states.request_status(combo, any_attempted=attempted)
        if all(s is S.CONFIRMED for s in combo):
            assert status is RequestStatus.COMPLETED
        elif S.FAILED in combo:
            assert status is RequestStatus.ACTION_REQUIRED
        elif not attempted and all(s is S.PENDING for s in combo):
            assert status is RequestStatus.ACCEPTED
        else:
            assert status is RequestStatus.IN_PROGRESS


def test_a_request_without_tasks_is_never_complete() -> None:
    assert states.request_status([], any_attempted=False) is RequestStatus.ACCEPTED


def test_the_fast_replace_matches_dataclasses_replace_and_refuses_an_unknown_field() -> None:
    import dataclasses

    task = TaskState(state=SystemState.RUNNING, attempts=2, vendor_ref="job-1")
    changes = {"state": SystemState.CONFIRMED, "outcome": "erased", "error_code": None}
    fast = states._replace(task, **changes)
    assert fast == dataclasses.replace(task, **changes) and hash(fast) == hash(dataclasses.replace(task, **changes))
    assert task.state is SystemState.RUNNING  # the original is untouched
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.attempts = 3  # type: ignore[misc]
    with pytest.raises(TypeError, match="attempt"):
        states._replace(task, attempt=3)


def test_lost_staging_reopens_a_confirmed_export_at_once_and_gives_its_attempt_back() -> None:
    confirmed = TaskState(state=S.CONFIRMED, attempts=2, outcome="exported", confirmed_at=NOW)
    after = states.transition(confirmed, EVENTS["staging_lost"], NOW, NO_JITTER)
    assert (after.state, after.attempts, after.next_attempt_at) == (S.RETRYING, 1, NOW)
    assert (after.outcome, after.confirmed_at, after.error_code) == (None, None, "export_staging_lost")


@pytest.mark.parametrize("state", [S.PENDING, S.RETRYING, S.WAITING_VENDOR])
def test_a_task_whose_system_no_worker_runs_fails_not_configured_and_keeps_its_attempts(state: SystemState) -> None:
    waiting = TaskState(state=state, attempts=2, next_attempt_at=NOW, vendor_ref="job-1", error_code="retryable",
                        waiting_since=NOW - timedelta(days=1))
    after = states.transition(waiting, EVENTS["unconfigured"], NOW, NO_JITTER)
    assert (after.state, after.error_code, after.error_message) == (
        S.FAILED, states.NOT_CONFIGURED, "system beta is not configured on any worker")
    assert (after.attempts, after.next_attempt_at, after.vendor_ref) == (2, None, "job-1")  # the job id stays
    retried = states.transition(after, EVENTS["operator_retry"], NOW, NO_JITTER)  # the system added back
    assert (retried.state, retried.attempts) == (S.PENDING, 0)
