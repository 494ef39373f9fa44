"""Stand-ins for Google's OAuth2 token endpoint, the GA User Deletion API and the Data Manager API.

Errors use Google's JSON shape: ``{"error": {"code", "message", "status", "errors":
[{"reason", "domain", "message"}]}}``. Both APIs check a bearer token; tokens come from
``POST /token`` (refresh-token grant) or are preset in ``access_tokens``.
"""

from __future__ import annotations

import itertools
import re
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

from devkit.standins.base import Reply, Request, StandIn

ACCESS_TOKEN = "ya29.standin-access-token"  # noqa: S105 - a test credential
CLIENT_ID = "standin-client.apps.googleusercontent.com"
CLIENT_SECRET = "standin-client-secret"  # noqa: S105 - a test credential
REFRESH_TOKEN = "1//standin-refresh-token"  # noqa: S105 - a test credential
ADS_LIST_ID = "9001"


def google_error(code: int, status: str, reason: str, message: str) -> Reply:
    return Reply(code, {"error": {"code": code, "message": message, "status": status,
                                  "errors": [{"reason": reason, "domain": "global", "message": message}]}})


class GoogleStandIn(StandIn):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.access_tokens = {ACCESS_TOKEN}
        self.clients = {CLIENT_ID: (CLIENT_SECRET, REFRESH_TOKEN)}
        self.tokens_issued = 0
        self.route("POST", "/token", self._token, "token")
        self.fault_exempt.add("token")  # Google's token server is another service than the API's

    def authorize(self, request: Request) -> Reply | None:
        if request.path == "/token":
            return None
        header = request.headers.get("authorization", "")
        if self.refused() or not header.startswith("Bearer ") or header[7:] not in self.access_tokens:
            return google_error(401, "UNAUTHENTICATED", "authError",
                                "Request had invalid authentication credentials.")
        return None

    def rate_limited_reply(self, retry_after: str) -> Reply:
        reply = google_error(429, "RESOURCE_EXHAUSTED", "rateLimitExceeded", "Quota exceeded.")
        reply.headers["Retry-After"] = retry_after
        return reply

    def not_found_reply(self) -> Reply:
        return google_error(404, "NOT_FOUND", "notFound", "Not Found")

    def _token(self, request: Request) -> Reply:
        form = {k: v[0] for k, v in _form(request).items()}
        known = self.clients.get(form.get("client_id", ""))
        if self.refused() or known is None or known[0] != form.get("client_secret"):
            return Reply(401, {"error": "invalid_client", "error_description": "Unauthorized"})
        if form.get("grant_type") != "refresh_token" or form.get("refresh_token") != known[1]:
            return Reply(400, {"error": "invalid_grant", "error_description": "Bad Request"})
        self.tokens_issued += 1
        token = f"ya29.issued-{self.tokens_issued}-{uuid.uuid4().hex[:8]}"
        self.access_tokens.add(token)
        return Reply(200, {"access_token": token, "expires_in": 3599, "token_type": "Bearer",
                           "scope": "https://www.googleapis.com/auth/analytics.user.deletion"})


def _form(request: Request) -> dict[str, list[str]]:
    return parse_qs(request.body.decode(), keep_blank_values=True)


class GoogleAnalyticsStandIn(GoogleStandIn):
    """``POST /analytics/v3/userDeletion/userDeletionRequests:upsert``; connector base_url is
    ``{url}/analytics/v3``. ``held`` maps (scope id, id type, user id) to whether data is held."""

    name = "google_analytics"
    ID_TYPES = {"CLIENT_ID", "USER_ID", "APP_INSTANCE_ID"}

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.held: dict[tuple[str, str, str], bool] = {}
        self.requests: list[dict[str, Any]] = []
        self.daily_limit: int | None = None
        self.route("POST", "/analytics/v3/userDeletion/userDeletionRequests:upsert", self._upsert, "upsert")

    @property
    def base_url(self) -> str:
        return f"{self.url}/analytics/v3"

    def seed(self, scope_id: str, id_type: str, user_id: str) -> None:
        self.held[(scope_id, id_type, user_id)] = True

    def holds(self, id_type: str, user_id: str) -> bool:
        return any(held for (_, t, u), held in self.held.items() if (t, u) == (id_type, user_id))

    def _upsert(self, request: Request) -> Reply:
        body = request.json()
        if not isinstance(body, dict) or body.get("kind") != "analytics#userDeletionRequest":
            return google_error(400, "INVALID_ARGUMENT", "invalid", "Invalid value for kind.")
        ident: dict[str, Any] = body["id"] if isinstance(body.get("id"), dict) else {}
        scopes = [k for k in ("propertyId", "webPropertyId", "firebaseProjectId") if body.get(k)]
        if ident.get("type") not in self.ID_TYPES or not ident.get("userId") or len(scopes) != 1:
            return google_error(400, "INVALID_ARGUMENT", "invalidParameter", "Invalid userDeletionRequest.")
        if self.daily_limit is not None and len(self.requests) >= self.daily_limit:
            return google_error(403, "PERMISSION_DENIED", "dailyLimitExceeded", "Daily Limit Exceeded.")
        key = (str(body[scopes[0]]), ident["type"], ident["userId"])
        if key in self.held:
            self.held[key] = False
        stamp = datetime.fromtimestamp(self.clock(), UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        self.requests.append(body)
        return Reply(200, {**body, "deletionRequestTime": stamp})


class DataManagerStandIn(GoogleStandIn):
    """``POST /v1/audienceMembers:remove`` and ``GET /v1/requestStatus:retrieve``; connector
    base_url is ``{url}/v1``. A removal job reports PROCESSING for ``polls_to_finish`` retrievals,
    then ``next_outcome`` (SUCCESS, FAILED, PARTIAL_SUCCESS); hashes leave the lists on SUCCESS."""

    name = "google_ads"
    _HEX = re.compile(r"^[0-9a-f]{64}$")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.lists: dict[str, set[str]] = {ADS_LIST_ID: set()}
        self.jobs: dict[str, dict[str, Any]] = {}
        self.bodies: list[dict[str, Any]] = []
        self.polls_to_finish = 2
        self.next_outcome = "SUCCESS"
        self._ids = itertools.count(1)
        self.route("POST", "/v1/audienceMembers:remove", self._remove, "remove")
        self.route("GET", "/v1/requestStatus:retrieve", self._retrieve, "retrieve")

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def seed(self, list_id: str, *hashes: str) -> None:
        self.lists.setdefault(list_id, set()).update(hashes)

    def holds(self, digest: str) -> bool:
        return any(digest in members for members in self.lists.values())

    def _remove(self, request: Request) -> Reply:
        body = request.json() if isinstance(request.json(), dict) else {}
        self.bodies.append(body)
        destinations, members = body.get("destinations") or [], body.get("audienceMembers") or []
        bad = google_error(400, "INVALID_ARGUMENT", "INVALID_ARGUMENT", "Request has an invalid argument.")
        if not 0 < len(destinations) <= 10 or not 0 < len(members) <= 10_000 or body.get("encoding") != "HEX":
            return bad
        list_ids = []
        for destination in destinations:
            account = destination.get("operatingAccount") or {}
            if not account.get("accountType") or not account.get("accountId"):
                return bad
            if destination.get("productDestinationId") not in self.lists:
                return google_error(400, "INVALID_ARGUMENT", "INVALID_PRODUCT_DESTINATION_ID",
                                    "The destination does not exist.")
            list_ids.append(destination["productDestinationId"])
        hashes = []
        for member in members:
            for ident in (member.get("userData") or {}).get("userIdentifiers") or []:
                value = ident.get("emailAddress") or ident.get("phoneNumber")
                if not isinstance(value, str) or not self._HEX.match(value):
                    return google_error(400, "INVALID_ARGUMENT", "INVALID_HEX_ENCODING", "Invalid hash.")
                hashes.append(value)
        request_id = f"{uuid.uuid4()}"
        self.jobs[request_id] = {"lists": list_ids, "hashes": hashes, "polls": 0,
                                 "outcome": self.next_outcome, "members": len(members)}
        return Reply(200, {"requestId": request_id})

    def _retrieve(self, request: Request) -> Reply:
        job = self.jobs.get(request.arg("requestId") or "")
        if job is None:
            return google_error(404, "NOT_FOUND", "NOT_FOUND", "Request not found.")
        job["polls"] += 1
        status = "PROCESSING" if job["polls"] <= self.polls_to_finish else job["outcome"]
        if status == "SUCCESS":
            for list_id in job["lists"]:
                self.lists[list_id].difference_update(job["hashes"])
        entries = []
        for list_id in job["lists"]:
            entry: dict[str, Any] = {
                "destination": {"productDestinationId": list_id}, "requestStatus": status,
                "audienceMembersRemovalStatus": {"userDataRemovalStatus": {
                    "recordCount": str(job["members"]), "userIdentifierCount": str(len(job["hashes"]))}},
            }
            if status in ("FAILED", "PARTIAL_SUCCESS"):
                entry["errorInfo"] = {"errorCounts": [{"recordCount": "1", "reason": "INVALID_USER_LIST"}]}
            entries.append(entry)
        return Reply(200, {"requestStatusPerDestination": entries})
