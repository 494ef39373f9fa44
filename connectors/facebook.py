"""Facebook Login: revoke the app's permissions for each of the subject's app-scoped user ids
(``DELETE /{user-id}/permissions``).

Outcome ``erased`` once revoked, ``not_found`` when no id is known. Graph API errors are classified
by code and subcode only (the message may quote the user id). What Meta documents:
docs/architecture.md."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

import httpx

from connectors.http import HttpSettings, VendorHttp, classify, json_body, parse_retry_after, safe_code
from connectors.vendor import Options, PerTargetConnector, build_gate, create_refusing_unused, valid_ids
from worker.core.connector import Connector, ConnectorContext, Result, Subject
from worker.core.errors import PermanentError, RetryableError
from worker.core.limits import RateSpec

DEFAULT_BASE_URL = "https://graph.facebook.com"
_ASID = re.compile(r"^\d{1,32}$")
_VERSION = re.compile(r"^v\d+\.\d+$")
_THROTTLE_CODES = {4, 17, 32, 341, 613, *range(80000, 80015)}
_TRANSIENT_CODES = {1, 2}
_TOKEN_CODES = {102, 190}
_PERMISSION_CODES = {3, 10, *range(200, 300)}
# What a message may quote: the documented codes (a vendor's undocumented number could be a user id).
_DOCUMENTED_CODES = {100, 803, *_THROTTLE_CODES, *_TRANSIENT_CODES, *_TOKEN_CODES, *_PERMISSION_CODES}
_DOCUMENTED_SUBCODES = {33, 458, 459, 460, 463, 464, 467, 490, 492}
_OP = "permissions revoke"


class FacebookConnector(PerTargetConnector[str]):
    no_targets = "no facebook app-scoped user id known"

    def __init__(self, system: str, opts: Options, context: ConnectorContext) -> None:
        http = HttpSettings.parse(opts, DEFAULT_BASE_URL)
        self._version = opts.text("api_version", "v25.0")
        if not _VERSION.match(self._version):
            raise opts.error("api_version", "must look like v25.0")
        self._token = opts.secret("app_access_token")
        self._backoff = opts.number("throttle_backoff_seconds", 300.0, minimum=1.0)
        self._usage_threshold = opts.number("usage_threshold_percent", 95.0)
        gate = build_gate(opts, context, buckets={f"facebook:app:{opts.text('app_id', 'default')}":
                                                  RateSpec(2.0, 5)})
        super().__init__(system, context, VendorHttp(system, http), gate)

    def _targets(self, subject: Subject) -> tuple[str, ...]:
        return valid_ids(self.system, subject, "facebook_user_id", self.context, _ASID,
                         "an app-scoped user id (digits only)")

    def _combine(self, note: str, answer: str) -> str:
        return "any" if "any" in (note, answer) else "none"

    def _finished(self, job: str, targets: Sequence[str], note: str, answers: Sequence[str]) -> Result:
        if note == "any":
            return Result("erased", detail=f"app permissions revoked for {len(targets)} app-scoped id(s)")
        return Result("not_found", detail="facebook knows none of the app-scoped ids")

    def _step(self, job: str, asid: str) -> str:
        """Revokes the app's permissions for one id: ``any`` if Facebook knew it, else ``none``."""
        response = self.call("DELETE", f"/{self._version}/{quote(asid, safe='')}/permissions", op=_OP,
                             params={"access_token": self._token.reveal()})
        self._watch_usage(response)
        body = json_body(response)
        if response.is_success and body.get("success") is True:
            return "any"
        error = body.get("error")
        error = error if isinstance(error, dict) else {}
        code, subcode = _int(error.get("code")), _int(error.get("error_subcode"))
        shown = (f"{safe_code(code, response, documented=_DOCUMENTED_CODES) or '?'}/"
                 f"{safe_code(subcode, response, documented=_DOCUMENTED_SUBCODES) or '-'}")
        label = f"{self.system}: {_OP} got HTTP {response.status_code} (graph error {shown})"
        if code == 100 and subcode == 33:
            return "none"
        if code in _THROTTLE_CODES or response.status_code == 429:
            asked = parse_retry_after(response.headers, self.context.now())
            wait = self._backoff if asked is None else asked  # 0 (or a date past) is an answer: now
            self.gate.hold(wait)
            raise RetryableError(f"{label}: the vendor is throttling this app", retry_after=wait,
                                 code="vendor_rate_limited")
        if code in _TRANSIENT_CODES or error.get("is_transient") is True:
            raise RetryableError(f"{label}: a transient vendor error", code="vendor_unavailable")
        if code in _TOKEN_CODES:
            raise PermanentError(f"{label}: the vendor refused our credentials (app token)",
                                 code="credentials_refused")
        if code in _PERMISSION_CODES:
            raise PermanentError(f"{label}: the app lacks the permission for this call",
                                 code="vendor_rejected")
        if response.is_success:
            raise PermanentError(f"{label}: unexpected answer", code="vendor_protocol")
        raise classify(self.system, _OP, response, self.context.now(), f"graph:{shown}" if code is not None else None)

    def _watch_usage(self, response: httpx.Response) -> None:
        """Pauses this app's calls before Meta starts refusing them (``X-App-Usage`` near 100%)."""
        raw = response.headers.get("x-app-usage")
        if not raw:
            return
        try:
            usage = json.loads(raw)
            peak = max(float(v) for v in usage.values()) if isinstance(usage, dict) and usage else 0.0
        except (ValueError, TypeError):
            return
        if peak >= self._usage_threshold:
            self.gate.hold(self._backoff)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def create(system_id: str, settings: Mapping[str, Any], context: ConnectorContext) -> Connector:
    return create_refusing_unused(FacebookConnector, "facebook", system_id, settings, context)
