"""The deletion callback's work once the signed_request is verified: one code per user and request.

The same user calling again while their request is open, or within the signed_request's lifetime
(a replay), gets the same request and the same code: no second erasure. A user the identity system
does not know gets a code whose page says no data was held; no command is published for them.
A command is published after its confirmation row is recorded; a row left unpublished (broker down)
is published again by the user's next call, under the same request id.

A customer whose stored id no valid command can carry (``H 8``) is a person's job, not an outage: Meta
gets its code (a 503 would only make it retry for ever), the row stays unpublished, its page says the
team is on it, and ``web_callback_needs_person`` names the request id for the runbook.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog

from worker import messages, support
from worker.config import Settings
from worker.web import codes
from worker.web.confirmations import TERMINAL, Confirmation, Confirmations
from worker.web.identity import Customer, FacebookIdentity
from worker.web.signed import SignedRequest

REASON = "data deletion request received through Facebook"
log = structlog.get_logger("oubli.web")
_EMAIL = "/properties/subject/properties/emails/items"
_PHONE = "/properties/subject/properties/phones/items"


class PublishFailed(RuntimeError):
    pass


@dataclass(frozen=True)
class Outcome:
    code: str
    result: str  # started, repeated, no_data, needs_person (metrics label)

    def __repr__(self) -> str:
        return f"Outcome(result={self.result!r})"


class Publisher:
    """One idempotent producer shared by every call; ``publish`` waits for the broker's acknowledgement."""

    def __init__(self, settings: Settings) -> None:
        secret = settings.signing_secret.get_secret_value().encode() if settings.signing_secret else None
        self._producer = support.CommandPublisher(settings.kafka, signing_secret=secret, timeout=10.0)
        self._lock = threading.Lock()

    def publish(self, command: dict[str, Any]) -> None:
        acknowledged: list[bool] = []
        with self._lock:
            self._producer.publish(command, acknowledged.append)
            if self._producer.flush() or acknowledged != [True]:
                raise PublishFailed("the command was not acknowledged")

    def close(self) -> None:
        self._producer.flush()


class DeletionCallback:
    def __init__(self, settings: Settings, confirmations: Confirmations, identity: FacebookIdentity,
                 publish: Callable[[dict[str, Any]], None], clock: Callable[[], datetime]) -> None:
        self._settings = settings
        self._key = settings.subject_key.get_secret_value().encode()
        self._confirmations = confirmations
        self._identity = identity
        self._publish = publish
        self._clock = clock

    def handle(self, signed: SignedRequest) -> Outcome:
        now = self._clock()
        ref = codes.user_ref(self._key, signed.user_id)
        generation = 1
        found = self._confirmations.latest(ref)
        if found is not None:
            earlier, status = found
            recent = (now - earlier.created_at).total_seconds() < self._settings.web.signed_request_max_age_seconds
            if recent or (earlier.request_id is not None and status not in TERMINAL):
                return self._repeat(earlier, signed.user_id)
            generation = earlier.generation + 1
        customer = self._identity.customer(signed.user_id)
        code = codes.new_code()
        fresh = Confirmation(
            code_hash=codes.code_hash(code), sealed_code=codes.seal(code, self._key, signed.user_id, generation),
            user_ref=ref, generation=generation, request_id=str(uuid.uuid4()) if customer else None,
            created_at=now, published_at=None,
        )
        stored = self._confirmations.insert(fresh)
        if stored is not fresh:  # a concurrent call of the same user won the race
            return self._repeat(stored, signed.user_id)
        if customer is None:
            return Outcome(code, "no_data")
        sent = self._send(stored, signed.user_id, customer)
        if sent and customer.other_accounts:
            # The first account's erasure is under way; the others would be left with their data and a
            # completed request on the person's page: a person erases them, under the logged request id.
            log.warning("web_callback_more_accounts", request_id=stored.request_id,
                        other_accounts=customer.other_accounts)
            return Outcome(code, "needs_person")
        return Outcome(code, "started" if sent else "needs_person")

    def _repeat(self, confirmation: Confirmation, user_id: str) -> Outcome:
        result = "repeated"
        if confirmation.request_id is not None and confirmation.published_at is None:
            customer = self._identity.customer(user_id)
            if customer is not None and not self._send(confirmation, user_id, customer):
                result = "needs_person"
        code = codes.unseal(confirmation.sealed_code, self._key, user_id, confirmation.generation)
        return Outcome(code, result)

    def _send(self, confirmation: Confirmation, user_id: str, customer: Customer) -> bool:
        """Publishes the erasure; False when no valid command can carry this customer (a person must act).

        An email or phone the schema refuses is left out and the rest goes; the customer id cannot be.
        """
        assert confirmation.request_id is not None
        emails = [e for e in customer.emails if messages.fits("command.v1", _EMAIL, e)]
        phones = [p for p in customer.phones if messages.fits("command.v1", _PHONE, p)]
        command = support.build_command(
            kind="erasure", customer_id=customer.customer_id, emails=emails, phones=phones,
            identifiers={"facebook_user_id": [user_id]}, systems=self._settings.web.erasure_systems,
            requested_by=self._settings.web.requested_by, reason=REASON, request_id=confirmation.request_id,
            requested_at=confirmation.created_at,
        )
        bad_text = messages.text_problem(command)
        problems = [bad_text] if bad_text is not None else messages.schema_errors("command.v1", command)
        if problems:  # paths and validator names only (``schema_errors``), never the values
            log.warning("web_callback_needs_person", request_id=confirmation.request_id, problems=problems[:5],
                        dropped_identifiers=len(customer.emails) + len(customer.phones) - len(emails) - len(phones))
            return False
        self._publish(command)
        self._confirmations.mark_published(confirmation.code_hash, self._clock())
        return True
