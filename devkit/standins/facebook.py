"""Stand-in for the Graph API's ``DELETE /v{N}/{app-scoped-user-id}/permissions``.

Errors use the Graph shape ``{"error": {"message", "type", "code", "error_subcode",
"fbtrace_id"}}``: an unknown user is code 100 / subcode 33, a bad token code 190, throttling
code 4 (HTTP 403 by default, or 429 with ``Retry-After`` from ``rate_limit_next``). Every answer
carries ``X-App-Usage`` with the share of ``hourly_budget`` spent.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from devkit.standins.base import Reply, Request, StandIn

APP_ACCESS_TOKEN = "1234567890|standin-app-secret"  # noqa: S105 - a test credential


def graph_error(status: int, code: int, message: str, kind: str = "OAuthException",
                subcode: int | None = None) -> Reply:
    error: dict[str, Any] = {"message": message, "type": kind, "code": code,
                             "fbtrace_id": uuid.uuid4().hex[:11]}
    if subcode is not None:
        error["error_subcode"] = subcode
    return Reply(status, {"error": error})


class FacebookStandIn(StandIn):
    name = "facebook"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.app_token = APP_ACCESS_TOKEN
        self.granted: dict[str, bool] = {}  # app-scoped id → whether the app still holds a grant
        self.hourly_budget = 10_000
        self.route("DELETE", r"/v\d+\.\d+/(?P<asid>[^/]+)/permissions", self._revoke, "revoke")

    @property
    def base_url(self) -> str:
        return self.url

    def seed(self, asid: str) -> None:
        self.granted[asid] = True

    def holds(self, asid: str) -> bool:
        return self.granted.get(asid, False)

    def authorize(self, request: Request) -> Reply | None:
        if self.refused() or request.arg("access_token") != self.app_token:
            return graph_error(400, 190, "Invalid OAuth access token - Cannot parse access token")
        return None

    def rate_limited_reply(self, retry_after: str) -> Reply:
        reply = graph_error(429, 4, "(#4) Application request limit reached", "OAuthException")
        reply.headers["Retry-After"] = retry_after
        return reply

    def throttle_next(self, count: int = 1) -> None:
        """Meta's usual throttle: HTTP 403, code 4, no ``Retry-After``."""
        self.fail_next(count, status=403, body={"error": {"message": "(#4) Application request limit reached",
                                                          "type": "OAuthException", "code": 4,
                                                          "fbtrace_id": "AbCdEf"}})

    def not_found_reply(self) -> Reply:
        return graph_error(400, 803, "(#803) Some of the aliases you requested do not exist")

    def _revoke(self, request: Request) -> Reply:
        asid = request.params["asid"]
        if asid not in self.granted:
            # Like Meta's, the message quotes the id: the connector must never pass it on.
            return graph_error(400, 100, f"Unsupported delete request. Object with ID '{asid}' does not "
                               "exist, cannot be loaded due to missing permissions, or does not support "
                               "this operation", "GraphMethodException", subcode=33)
        self.granted[asid] = False
        usage = min(100, round(100 * (self.count("revoke") + 1) / self.hourly_budget))  # with this call
        return Reply(200, {"success": True},
                     {"X-App-Usage": json.dumps({"call_count": usage, "total_cputime": 1, "total_time": 1})})
