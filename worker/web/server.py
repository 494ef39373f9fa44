"""Builds the web services from the settings and runs them under uvicorn (``oubli web``)."""

from __future__ import annotations

from typing import Any

import uvicorn

from worker.config import Settings, WebSettings
from worker.core.errors import ConfigError
from worker.core.timefmt import utcnow
from worker.store import db
from worker.web.app import Services, create_app
from worker.web.confirmations import Confirmations
from worker.web.deadline import DeadlineH11Protocol
from worker.web.deletion import DeletionCallback, Publisher
from worker.web.identity import FacebookIdentity


def build_services(settings: Settings) -> Services:
    engine = db.create_engine(settings.store_url)
    if db.pending_migrations(engine):
        raise ConfigError("the store's schema is not this version's: run `oubli migrate` first")
    confirmations = Confirmations(engine)
    callback = None
    if settings.web.facebook_app_secret is not None:
        identity = FacebookIdentity.from_settings(settings)
        callback = DeletionCallback(settings, confirmations, identity, Publisher(settings).publish, utcnow)
    return Services(settings=settings, engine=engine, confirmations=confirmations, callback=callback)


def serve(settings: Settings, *, host: str | None = None, port: int | None = None) -> None:
    app = create_app(build_services(settings))
    uvicorn.run(app, **server_options(settings.web, host=host, port=port))


# Connections (and requests in progress) served at once; past it uvicorn answers 503 at once. Each slow client is held
# at most the request deadline, but a flood of them would otherwise take file descriptors and memory without bound,
# and the store's connections and Meta's next callback need them too.
MAX_CONNECTIONS = 512


def server_options(web: WebSettings, *, host: str | None = None, port: int | None = None) -> dict[str, Any]:
    """How uvicorn runs ``oubli web``; the tests serve their app with the same."""
    # No access log: a status path holds the confirmation code. _AccessMetrics counts by route instead.
    # h11 with a deadline on each request's arrival (worker.web.deadline): uvicorn has none, and a slow client
    # held its connection for good.
    return {"host": host or web.host, "port": web.port if port is None else port, "access_log": False,
            "proxy_headers": True, "forwarded_allow_ips": web.trusted_proxies, "server_header": False,
            "log_config": None, "timeout_graceful_shutdown": 10, "http": DeadlineH11Protocol,
            "limit_concurrency": MAX_CONNECTIONS}
