"""Shopimind: delete the subject's customer records (bulk, asynchronous: outcome ``requested``);
export what ``getCustomer`` returns.

The API key travels in the ``spm-api-key`` header. A 2xx counts only with the documented answer
(``sent_count`` and ``rejected_count`` for a delete, ``data`` for a get); any other is
``vendor_protocol``. What Shopimind documents, and what is assumed where it does not:
docs/architecture.md."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, TypeGuard
from urllib.parse import quote

import httpx

from connectors.http import HttpSettings, VendorHttp, classify, json_body, safe_code
from connectors.vendor import Options, VendorConnector, build_gate, create_refusing_unused, valid_ids
from worker.core.connector import CallResult, Connector, ConnectorContext, ExportWriter, Result, Subject
from worker.core.errors import ConnectorError, PermanentError
from worker.core.limits import RateSpec

DEFAULT_BASE_URL = "https://core.shopimind.com"
BULK_LIMIT = 20
_ID = re.compile(r"^(?!\.{1,2}$)[A-Za-z0-9_.:-]{1,128}$")


class ShopimindConnector(VendorConnector):
    def __init__(self, system: str, opts: Options, context: ConnectorContext) -> None:
        http = HttpSettings.parse(opts, DEFAULT_BASE_URL)
        key = opts.secret("api_key")
        bucket = f"shopimind:{opts.text('shop', 'default')}"
        gate = build_gate(opts, context, buckets={bucket: RateSpec(5.0, 5)})
        client = VendorHttp(system, http, headers={"spm-api-key": key.reveal()})
        super().__init__(system, context, client, gate)

    def _ids(self, subject: Subject) -> tuple[str, ...]:
        return valid_ids(self.system, subject, "shopimind_customer_id", self.context, _ID,
                         "a valid shopimind customer id")

    def erase(self, subject: Subject) -> CallResult:
        ids = self._ids(subject)
        if not ids:
            return Result("not_found", detail="no shopimind customer id known")
        if len(ids) == 1:
            path = f"/v1/customers/{quote(ids[0], safe='')}"
            self._accepted(self.call("DELETE", path, op="customer delete"), "customer delete")
        else:
            # Every chunk is idempotent, so a retry after a failed second chunk may redo the first.
            for start in range(0, len(ids), BULK_LIMIT):
                chunk = [{"customer_id": customer_id} for customer_id in ids[start:start + BULK_LIMIT]]
                self._accepted(self.call("POST", "/v1/customers/bulk-delete", op="customer bulk delete",
                                         json=chunk), "customer bulk delete")
        return Result("requested", detail=f"deletion queued for {len(ids)} customer id(s)")

    def _accepted(self, response: httpx.Response, op: str) -> None:
        """Only the documented answer acknowledges: a proxy's HTML page or an empty 200 deleted nothing."""
        if not response.is_success:
            raise self._error(response, op)
        body = json_body(response)
        sent, rejected = body.get("sent_count"), body.get("rejected_count")
        if not (_count(sent) and _count(rejected)):
            raise self._unexpected(response, op)
        if rejected > 0:
            raise PermanentError(f"{self.system}: {op} got HTTP {response.status_code}: the vendor "
                                 f"rejected {rejected} identifier(s) as invalid", code="vendor_rejected")

    def export(self, subject: Subject, writer: ExportWriter) -> CallResult:
        rows = []
        for customer_id in self._ids(subject):
            response = self.call("GET", f"/v1/customers/{quote(customer_id, safe='')}", op="customer get")
            if response.status_code == 404:
                continue
            if not response.is_success:
                raise self._error(response, "customer get")
            data = json_body(response).get("data")
            if not isinstance(data, dict):  # else an HTML 200 would report that Shopimind holds nothing
                raise self._unexpected(response, "customer get")
            if data:
                rows.append(data)
        if not rows:
            return Result("not_found", detail="shopimind holds no customer record for the known ids")
        writer.write_rows("shopimind_customers", rows)
        return Result("exported", records=len(rows))

    def _error(self, response: httpx.Response, op: str) -> ConnectorError:
        body = json_body(response)
        return classify(self.system, op, response, self.context.now(), safe_code(body.get("error"), response))

    def _unexpected(self, response: httpx.Response, op: str) -> PermanentError:
        return PermanentError(f"{self.system}: {op} got HTTP {response.status_code} without the documented "
                              "answer", code="vendor_protocol")


def _count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def create(system_id: str, settings: Mapping[str, Any], context: ConnectorContext) -> Connector:
    return create_refusing_unused(ShopimindConnector, "shopimind", system_id, settings, context)
