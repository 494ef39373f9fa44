"""The newsletter opt-in base: email, professions and the consent history.

``suppressions`` holds only keyed hashes (HMAC-SHA256) of normalised addresses that asked to be
forgotten, so that an import never brings them back.
"""

from __future__ import annotations

import sqlalchemy as sa

from connectors.sql_config import normalised_email_sql

metadata = sa.MetaData()

subscribers = sa.Table(
    "subscribers",
    metadata,
    sa.Column("subscriber_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("email", sa.String(254), nullable=False),
    sa.Column("customer_id", sa.String(32), index=True),
    sa.Column("status", sa.String(16), nullable=False),  # pending, subscribed, unsubscribed
    sa.Column("language", sa.String(2), nullable=False),
    sa.Column("source", sa.String(32), nullable=False),  # footer_form, checkout, account, trade_show
    sa.Column("subscribed_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("unsubscribed_at", sa.DateTime(timezone=True)),
)
sa.Index("ix_subscribers_email_norm", normalised_email_sql(subscribers.c.email), unique=True)

subscriber_professions = sa.Table(
    "subscriber_professions",
    metadata,
    sa.Column("subscriber_id", sa.Integer, sa.ForeignKey("subscribers.subscriber_id"), primary_key=True),
    sa.Column("profession", sa.String(64), primary_key=True),
)

consent_events = sa.Table(
    "consent_events",
    metadata,
    sa.Column("event_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("subscriber_id", sa.Integer, sa.ForeignKey("subscribers.subscriber_id"), nullable=False, index=True),
    sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("action", sa.String(16), nullable=False),  # opt_in, confirm, opt_out, bounce
    sa.Column("source", sa.String(32), nullable=False),
    sa.Column("ip_address", sa.String(45)),
    sa.Column("wording_version", sa.String(16)),
)

suppressions = sa.Table(
    "suppressions",
    metadata,
    sa.Column("email_hmac", sa.String(80), primary_key=True),
    sa.Column("suppressed_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("reason", sa.String(32), nullable=False),
)
