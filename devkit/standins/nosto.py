"""Stand-in for Nosto's GDPR endpoints: ``DELETE /v1/customers/redact/{email}`` and
``POST /v1/customers/takeout/{email}``, with the API token over HTTP Basic (empty user name).

Nosto documents no error bodies; this stand-in answers ``{"message": …}`` with the status.
Redaction takes effect at once here (Nosto queues it): ``holds`` reflects what was requested.
"""

from __future__ import annotations

import base64
from typing import Any

from devkit.standins.base import Reply, Request, StandIn

API_TOKEN = "standin-nosto-email-token-WI0j2oN7TgG42tlblX3yz"  # noqa: S105 - a test credential


class NostoStandIn(StandIn):
    name = "nosto"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.token = API_TOKEN
        self.customers: set[str] = set()  # lower-cased addresses with data
        self.redactions: list[str] = []
        self.takeouts: list[str] = []
        self.route("DELETE", "/v1/customers/redact/(?P<email>[^/]+)", self._redact, "redact")
        self.route("POST", "/v1/customers/takeout/(?P<email>[^/]+)", self._takeout, "takeout")

    @property
    def base_url(self) -> str:
        return self.url

    def seed(self, email: str) -> None:
        self.customers.add(email.lower())

    def holds(self, email: str) -> bool:
        return email.lower() in self.customers

    def authorize(self, request: Request) -> Reply | None:
        expected = "Basic " + base64.b64encode(f":{self.token}".encode()).decode()
        if self.refused() or request.headers.get("authorization") != expected:
            return Reply(401, {"message": "Unauthorized"}, {"WWW-Authenticate": 'Basic realm="Nosto"'})
        return None

    def _redact(self, request: Request) -> Reply:
        email = request.params["email"]
        self.redactions.append(email)
        self.customers.discard(email.lower())
        return Reply(200)

    def _takeout(self, request: Request) -> Reply:
        self.takeouts.append(request.params["email"])
        return Reply(200)
