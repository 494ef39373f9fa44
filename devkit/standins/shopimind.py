"""Stand-in for Shopimind's customer endpoints under ``/v1``, with the ``spm-api-key`` header.

``DELETE /v1/customers/{id}`` and ``POST /v1/customers/bulk-delete`` (≤ 20 ``{"customer_id"}``
objects) are idempotent and answer ``{statusCode, sent_count, rejected_count, rejected_items}``;
``GET /v1/customers/{id}`` answers ``{statusCode, data}`` or 404. Errors are
``{statusCode, error, message}``.
"""

from __future__ import annotations

import re
from typing import Any

from devkit.standins.base import Reply, Request, StandIn

API_KEY = "standin-spm-key-0123456789abcdef"  # noqa: S105 - a test credential
_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


def spm_error(status: int, error: str, message: str) -> Reply:
    return Reply(status, {"statusCode": status, "error": error, "message": message})


class ShopimindStandIn(StandIn):
    name = "shopimind"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.api_key = API_KEY
        self.customers: dict[str, dict[str, Any]] = {}
        self.deleted: list[str] = []
        self.route("DELETE", "/v1/customers/(?P<customer_id>[^/]+)", self._delete, "delete")
        self.route("POST", "/v1/customers/bulk-delete", self._bulk_delete, "bulk-delete")
        self.route("GET", "/v1/customers/(?P<customer_id>[^/]+)", self._get, "get")

    @property
    def base_url(self) -> str:
        return self.url

    def seed(self, customer_id: str, **fields: Any) -> None:
        self.customers[customer_id] = {"customer_id": customer_id, "lang": "fr",
                                       "is_newsletter_subscribed": True, **fields}

    def holds(self, customer_id: str) -> bool:
        return customer_id in self.customers

    def authorize(self, request: Request) -> Reply | None:
        if self.refused() or request.headers.get("spm-api-key") != self.api_key:
            return spm_error(401, "Unauthorized", "Invalid or inactive API key")
        return None

    def rate_limited_reply(self, retry_after: str) -> Reply:
        reply = spm_error(429, "Too Many Requests", "Rate limit exceeded")
        reply.headers["Retry-After"] = retry_after
        return reply

    def not_found_reply(self) -> Reply:
        return spm_error(404, "Not Found", "Cannot find route")

    def _accepted(self, ids: list[str], rejected: list[dict[str, Any]]) -> Reply:
        for customer_id in ids:
            self.deleted.append(customer_id)
            self.customers.pop(customer_id, None)
        return Reply(200, {"statusCode": 200, "sent_count": len(ids), "rejected_count": len(rejected),
                           "rejected_items": rejected})

    def _delete(self, request: Request) -> Reply:
        customer_id = request.params["customer_id"]
        if not _ID.match(customer_id):
            return spm_error(400, "Bad Request", "All objects are invalid")
        return self._accepted([customer_id], [])

    def _bulk_delete(self, request: Request) -> Reply:
        items = request.json()
        if not isinstance(items, list) or not 0 < len(items) <= 20:
            return spm_error(400, "Bad Request", "The request body must be an array of at most 20 objects")
        ids, rejected = [], []
        for index, item in enumerate(items):
            value = item.get("customer_id") if isinstance(item, dict) else None
            if isinstance(value, str) and _ID.match(value):
                ids.append(value)
            else:
                rejected.append({"index": index, "item": item, "errors": ["customer_id is invalid"]})
        if not ids:
            return spm_error(400, "Bad Request", "All objects are invalid")
        return self._accepted(ids, rejected)

    def _get(self, request: Request) -> Reply:
        record = self.customers.get(request.params["customer_id"])
        if record is None:
            return spm_error(404, "Not Found", "Customer not found")
        return Reply(200, {"statusCode": 200, "data": record})
