"""Google Ads Customer Match: remove the subject's hashed email and phone through the Data Manager API
(``audienceMembers:remove``, then ``requestStatus:retrieve``).

Outcome ``requested``: Google cannot tell whether the subject was on a list. The gmail-canonical hash
is sent next to the plain one when they differ. What Google documents (formatting, limits, statuses):
docs/architecture.md."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

import httpx

from connectors.google_auth import GoogleCredentials, google_error_code
from connectors.http import HttpSettings, VendorHttp, classify, json_body, safe_code
from connectors.vendor import Options, VendorConnector, build_gate, create_refusing_unused
from worker.core.connector import CallResult, Connector, ConnectorContext, Pending, Result, Subject
from worker.core.errors import NeedsPersonError, PermanentError
from worker.core.identifiers import ascii_lower
from worker.core.limits import RateSpec

DEFAULT_BASE_URL = "https://datamanager.googleapis.com/v1"
_GMAIL = {"gmail.com", "googlemail.com"}
_E164 = re.compile(r"^\+[1-9]\d{6,14}$")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_ACCOUNT_TYPES = {"GOOGLE_ADS", "DISPLAY_VIDEO_PARTNER", "DISPLAY_VIDEO_ADVERTISER", "DATA_PARTNER"}


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def normalize_email(raw: str) -> str:
    """Lower-cased, with leading, trailing and intermediate whitespace removed, as Google documents it.

    A-Z only (``worker.core.identifiers``): the same hashes for ASCII addresses, and no Kelvin sign
    hashed as the ASCII k of someone else's address."""
    return ascii_lower("".join(raw.split()))


def canonical_gmail(normalized: str) -> str:
    """Google's form for gmail addresses: no dots and no ``+tag`` in the local part."""
    local, _, domain = normalized.rpartition("@")
    if domain not in _GMAIL or not local:
        return normalized
    return f"{local.split('+', 1)[0].replace('.', '')}@{domain}"


def normalize_phone(raw: str) -> str | None:
    """E.164 (``+`` and 7 to 15 digits) from common written forms; ``None`` if it cannot be."""
    compact = re.sub(r"[\s().\-/]", "", raw)
    if compact.startswith("00"):
        compact = "+" + compact[2:]
    return compact if _E164.match(compact) else None


def email_hashes(raw: str) -> list[str]:
    plain = normalize_email(raw)
    return sorted({sha256_hex(plain), sha256_hex(canonical_gmail(plain))})


class GoogleAdsConnector(VendorConnector):
    def __init__(self, system: str, opts: Options, context: ConnectorContext) -> None:
        http = HttpSettings.parse(opts, DEFAULT_BASE_URL)
        lists = opts.texts("user_list_ids")
        self._destinations = [self._destination(opts, list_id) for list_id in lists]
        if len(self._destinations) > 10:
            raise opts.error("user_list_ids", "may name at most 10 lists (one request's destinations)")
        self._poll_after = opts.number("poll_interval_seconds", 60.0)
        project = opts.text("project", "default")
        key = f"google_ads:project:{project}"
        gate = build_gate(opts, context, buckets={key: RateSpec(5.0, 5)}, quotas={key: 100_000},
                          quota_tz="America/Los_Angeles")
        self._credentials = GoogleCredentials(opts, context.now, http)
        super().__init__(system, context, VendorHttp(system, http), gate)

    @staticmethod
    def _destination(opts: Options, list_id: str) -> dict[str, Any]:
        operating = opts.section("operating_account")
        account_type = operating.text("account_type", "GOOGLE_ADS")
        if account_type not in _ACCOUNT_TYPES:
            raise operating.error("account_type", f"must be one of {sorted(_ACCOUNT_TYPES)}")
        destination: dict[str, Any] = {
            "operatingAccount": {"accountType": account_type, "accountId": operating.text("account_id")},
            "productDestinationId": list_id,
        }
        if opts.has("login_account"):
            login = opts.section("login_account")
            destination["loginAccount"] = {"accountType": login.text("account_type", "GOOGLE_ADS"),
                                           "accountId": login.text("account_id")}
        return destination

    def _members(self, subject: Subject) -> list[dict[str, Any]]:
        members = [{"userData": {"userIdentifiers": [{"emailAddress": digest}]}}
                   for email in subject.emails if "@" in normalize_email(email)
                   for digest in email_hashes(email)]
        for phone in subject.phones:
            e164 = normalize_phone(phone)
            if e164 is None:
                raise NeedsPersonError(f"{self.system}: a phone number is not in E.164 form; correct it at "
                                       "the source or confirm this system manually", code="invalid_phone")
            members.append({"userData": {"userIdentifiers": [{"phoneNumber": sha256_hex(e164)}]}})
        unique = {repr(member): member for member in members}
        return list(unique.values())

    def erase(self, subject: Subject) -> CallResult:
        members = self._members(subject)
        if not members:
            return Result("not_found", detail="no email address or phone number known")
        response = self.call("POST", "/audienceMembers:remove", op="audience members remove",
                             headers=self._credentials.headers(),
                             json={"destinations": self._destinations, "audienceMembers": members,
                                   "encoding": "HEX"})
        self._raise_for(response, "audience members remove")
        request_id = json_body(response).get("requestId")
        if not isinstance(request_id, str) or not _REQUEST_ID.match(request_id):
            raise PermanentError(f"{self.system}: audience members remove returned no request id",
                                 code="vendor_protocol")
        return Pending(request_id, poll_after=self._poll_after)

    def poll(self, subject: Subject, vendor_ref: str) -> CallResult:
        if not _REQUEST_ID.match(vendor_ref):
            return super().poll(subject, vendor_ref)
        response = self.call("GET", "/requestStatus:retrieve", op="request status retrieve",
                             headers=self._credentials.headers(), params={"requestId": vendor_ref})
        if response.status_code == 404:
            return self.erase(subject)  # the vendor forgot the request: removing again is harmless
        self._raise_for(response, "request status retrieve")
        listed = json_body(response).get("requestStatusPerDestination")
        if not isinstance(listed, list):  # else a proxy's HTML 200 would keep us polling for weeks
            raise PermanentError(f"{self.system}: request status retrieve got HTTP {response.status_code} without "
                                 "the documented answer", code="vendor_protocol")
        statuses = [status for status in listed if isinstance(status, dict)]
        states = {s.get("requestStatus") for s in statuses}
        if "FAILED" in states:
            raise PermanentError(f"{self.system}: the vendor failed the removal ({_reason(statuses, response)})",
                                 code="vendor_job_failed")
        if not statuses or states - {"SUCCESS", "PARTIAL_SUCCESS"}:
            return Pending(vendor_ref, poll_after=self._poll_after)
        if "PARTIAL_SUCCESS" in states:
            raise NeedsPersonError(f"{self.system}: the vendor removed only part of the request "
                                   f"({_reason(statuses, response)}); check it in Google Ads",
                                   code="vendor_job_partial")
        return Result("requested", vendor_ref=vendor_ref,
                      detail=f"removal processed for {len(statuses)} user list(s)")

    def _raise_for(self, response: httpx.Response, op: str) -> None:
        if response.is_success:
            return
        if response.status_code == 401:
            self._credentials.refused()
        raise classify(self.system, op, response, self.context.now(), google_error_code(response))

    def close(self) -> None:
        self._credentials.close()
        super().close()


def _reason(statuses: list[dict[str, Any]], response: httpx.Response) -> str:
    for status in statuses:
        info = status.get("errorInfo")
        for count in (info.get("errorCounts") or ()) if isinstance(info, dict) else ():
            if isinstance(count, dict) and (code := safe_code(count.get("reason"), response)):
                return code
    return "no reason given"


def create(system_id: str, settings: Mapping[str, Any], context: ConnectorContext) -> Connector:
    return create_refusing_unused(GoogleAdsConnector, "google_ads", system_id, settings, context)
