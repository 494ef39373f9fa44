"""Nosto: GDPR redaction and takeout by email address, both queued by the vendor (outcome ``requested``).

The API token goes over HTTP Basic with an empty user name, and never over plain HTTP (a non-https
``base_url`` is refused unless ``allow_insecure_http: true``, for tests). Nosto documents neither
rate limits nor error bodies: the default limit (5/s) is ours. Details: docs/architecture.md."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any
from urllib.parse import quote

import httpx

from connectors.http import HttpSettings, VendorHttp, classify, json_body, safe_code
from connectors.vendor import Options, PerTargetConnector, VendorConnector, build_gate, create_refusing_unused
from worker.core.connector import CallResult, Connector, ConnectorContext, ExportWriter, Pending, Result, Subject
from worker.core.identifiers import ascii_lower
from worker.core.limits import RateSpec

DEFAULT_BASE_URL = "https://api.nosto.com"
_METHODS = {"redact": "DELETE", "takeout": "POST"}


class NostoConnector(PerTargetConnector[str]):
    no_targets = "no email address known"

    def __init__(self, system: str, opts: Options, context: ConnectorContext) -> None:
        http = HttpSettings.parse(opts, DEFAULT_BASE_URL)
        token = opts.secret("api_token")
        self._delay = timedelta(hours=opts.number("expected_delay_hours", 24.0))
        key = f"nosto:{opts.text('account', 'default')}"
        gate = build_gate(opts, context, buckets={key: RateSpec(5.0, 5)})
        client = VendorHttp(system, http, auth=httpx.BasicAuth("", token.reveal()))
        super().__init__(system, context, client, gate)

    def _targets(self, subject: Subject) -> list[str]:
        """Each address as given and lower-cased (A-Z only, as oubli matches): Nosto matches the address it
        was sent."""
        stripped = [email.strip() for email in subject.emails if "@" in email]
        return sorted({form for email in stripped for form in (email, ascii_lower(email))})

    def erase(self, subject: Subject) -> CallResult:
        return _tagged("redact", self._start(subject, "redact"))

    def export(self, subject: Subject, writer: ExportWriter) -> CallResult:
        return _tagged("takeout", self._start(subject, "takeout"))

    def poll(self, subject: Subject, vendor_ref: str) -> CallResult:
        kind, _, rest = vendor_ref.partition("+")
        if kind not in _METHODS:  # refused; the per-target ``poll`` would resume it as an erase
            return VendorConnector.poll(self, subject, vendor_ref)
        return _tagged(kind, self._resume(subject, kind, rest))

    def _finished(self, kind: str, emails: Sequence[str], note: str, answers: Sequence[str]) -> Result:
        if kind == "redact":
            return Result("requested", expected_by=self.context.now() + self._delay,
                          detail=f"redaction queued for {len(emails)} address form(s)")
        return Result("requested", expected_by=self.context.now() + self._delay,
                      detail="takeout queued; Nosto e-mails the merchant when it is ready")

    def _step(self, kind: str, email: str) -> str:
        op = f"customer {kind}"
        response = self.call(_METHODS[kind], f"/v1/customers/{kind}/{quote(email, safe='@+')}", op=op)
        if response.is_success:
            return ""
        body = json_body(response)
        code = safe_code(body.get("code") or body.get("type") or body.get("error"), response)
        raise classify(self.system, op, response, self.context.now(), code)


def _tagged(kind: str, result: CallResult) -> CallResult:
    """A ``Pending`` names its job (``redact+progress:1/2``), so that ``poll`` resumes the right one."""
    if isinstance(result, Pending):
        return Pending(f"{kind}+{result.vendor_ref}", poll_after=result.poll_after)
    return result


def create(system_id: str, settings: Mapping[str, Any], context: ConnectorContext) -> Connector:
    return create_refusing_unused(NostoConnector, "nosto", system_id, settings, context)
