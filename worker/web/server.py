"""Builds the web services from the settings and runs them under uvicorn (``oubli web``)."""

from __future__ import annotations

import uvicorn

from worker.config import Settings
from worker.core.errors import ConfigError
from worker.core.timefmt import utcnow
from worker.store import db
from worker.web.app import Services, create_app
from worker.web.confirmations import Confirmations
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
    web = settings.web
    app = create_app(build_services(settings))
    # No access log: a status path holds the confirmation code. _AccessMetrics counts by route instead.
    uvicorn.run(app, host=host or web.host, port=web.port if port is None else port, access_log=False,
                proxy_headers=True, forwarded_allow_ips=web.trusted_proxies, server_header=False,
                log_config=None, timeout_graceful_shutdown=10)
