"""Contact-form messages (email and message, kept 1 year) and customer service replies."""

from __future__ import annotations

import sqlalchemy as sa

from connectors.sql_config import normalised_email_sql

metadata = sa.MetaData()

contact_messages = sa.Table(
    "contact_messages",
    metadata,
    sa.Column("message_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("email", sa.String(254), nullable=False),  # as typed in the form: case and spaces vary
    sa.Column("topic", sa.String(32), nullable=False),  # order, product, return, invoice, other
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("order_ref", sa.String(32)),
    sa.Column("status", sa.String(16), nullable=False),  # new, answered, closed
)
sa.Index("ix_contact_messages_email_norm", normalised_email_sql(contact_messages.c.email))

contact_replies = sa.Table(
    "contact_replies",
    metadata,
    sa.Column("reply_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("message_id", sa.Integer, sa.ForeignKey("contact_messages.message_id"), nullable=False, index=True),
    sa.Column("sent_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("agent", sa.String(64), nullable=False),
    sa.Column("body", sa.Text, nullable=False),
)
