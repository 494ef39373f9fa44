"""Google Analytics: the User Deletion API, one idempotent upsert per identifier.

Outcome ``requested`` with ``expected_by`` (Google deletes at its next run, every two months). When
our own limiter stops a run part-way, the connector returns ``Pending`` with a progress marker and
``poll`` resumes after the ids already accepted. What Google documents: docs/architecture.md."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

from connectors.google_auth import GoogleCredentials, google_error_code
from connectors.http import HttpSettings, VendorHttp, classify, json_body, parse_retry_after
from connectors.vendor import Options, PerTargetConnector, build_gate, create_refusing_unused, resolve_ids
from worker.core.connector import Connector, ConnectorContext, Result, Subject
from worker.core.errors import PermanentError, QuotaDeferred, RetryableError
from worker.core.limits import RateSpec

DEFAULT_BASE_URL = "https://www.googleapis.com/analytics/v3"
ID_TYPES = {"ga_client_id": "CLIENT_ID", "ga_user_id": "USER_ID", "ga_app_instance_id": "APP_INSTANCE_ID"}
_SCOPES = {"property_id": "propertyId", "web_property_id": "webPropertyId",
           "firebase_project_id": "firebaseProjectId"}
_RATE_REASONS = {"rateLimitExceeded", "userRateLimitExceeded"}
_DAILY_REASONS = {"dailyLimitExceeded", "quotaExceeded"}
_OP = "user deletion upsert"
# What Google documents for ``deletionRequestTime`` (RFC 3339, UTC). The stamp becomes the receipt's
# ``vendor_ref``, and a receipt carries no personal data: anything else in its place (a proxy's answer, a
# vendor echoing what it was sent) is not kept.
_STAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})")


class GoogleAnalyticsConnector(PerTargetConnector[tuple[str, str]]):
    no_targets = "no google analytics identifier known"

    def __init__(self, system: str, opts: Options, context: ConnectorContext) -> None:
        http = HttpSettings.parse(opts, DEFAULT_BASE_URL)
        chosen = [key for key in _SCOPES if opts.has(key)]
        if len(chosen) != 1:
            raise opts.error("property_id", "(or web_property_id, or firebase_project_id): set exactly one")
        self._scope = (_SCOPES[chosen[0]], opts.text(chosen[0]))
        self._kinds = opts.texts("identifier_kinds", tuple(ID_TYPES))
        if unknown := [kind for kind in self._kinds if kind not in ID_TYPES]:
            raise opts.error("identifier_kinds", f"has unknown kinds {unknown}; known: {sorted(ID_TYPES)}")
        self._delay = timedelta(days=opts.number("expected_delay_days", 63, minimum=0))
        project = opts.text("project", "default")
        scope_key = f"google_analytics:{chosen[0]}:{self._scope[1]}"
        gate = build_gate(opts, context, buckets={scope_key: RateSpec(1.5, 1)},
                          quotas={scope_key: 500, f"google_analytics:project:{project}": 500},
                          quota_tz="America/Los_Angeles")
        self._credentials = GoogleCredentials(opts, context.now, http)
        super().__init__(system, context, VendorHttp(system, http), gate)

    def _targets(self, subject: Subject) -> list[tuple[str, str]]:
        return [(ID_TYPES[kind], value) for kind in self._kinds
                for value in resolve_ids(self.system, subject, kind, self.context)]

    def _finished(self, job: str, targets: Sequence[tuple[str, str]], note: str, answers: Sequence[str]) -> Result:
        stamp = answers[-1] if answers and answers[-1] else None
        return Result("requested", vendor_ref=f"deletionRequestTime:{stamp}" if stamp else None,
                      expected_by=self.context.now() + self._delay,
                      detail=f"{len(targets)} user deletion request(s) accepted")

    def _step(self, job: str, target: tuple[str, str]) -> str:
        """Upserts one deletion request; answers its ``deletionRequestTime`` (or nothing)."""
        id_type, user_id = target
        body: dict[str, Any] = {"kind": "analytics#userDeletionRequest",
                                "id": {"type": id_type, "userId": user_id}, self._scope[0]: self._scope[1]}
        response = self.call("POST", "/userDeletion/userDeletionRequests:upsert", op=_OP,
                             json=body, headers=self._credentials.headers())
        if response.is_success:
            # The documented answer is the request resource, stamped; a proxy's HTML 200 accepted nothing.
            stamp = json_body(response).get("deletionRequestTime")
            if not isinstance(stamp, str) or not stamp:
                raise PermanentError(f"{self.system}: {_OP} got HTTP {response.status_code} without the documented "
                                     "answer", code="vendor_protocol")
            return stamp if _STAMP.fullmatch(stamp) else ""
        code = google_error_code(response)
        if response.status_code in (403, 429) and code in _DAILY_REASONS:
            wait = self.gate.exhaust_quotas()
            raise QuotaDeferred(f"{self.system}: the vendor says the daily quota is spent ({code})",
                                retry_after=wait)
        if response.status_code in (403, 429) and code in _RATE_REASONS:
            asked = parse_retry_after(response.headers, self.context.now())
            wait = 1.0 if asked is None else asked  # 0 (or a date past) is an answer: now
            self.gate.hold(wait)
            raise RetryableError(f"{self.system}: {_OP} got HTTP {response.status_code} ({code}): the vendor "
                                 "asks us to slow down", retry_after=wait, code="vendor_rate_limited")
        if response.status_code == 401:
            self._credentials.refused()
        raise classify(self.system, _OP, response, self.context.now(), code)

    def close(self) -> None:
        self._credentials.close()
        super().close()


def create(system_id: str, settings: Mapping[str, Any], context: ConnectorContext) -> Connector:
    return create_refusing_unused(GoogleAnalyticsConnector, "google_analytics", system_id, settings, context)
