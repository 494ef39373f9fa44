"""The loyalty programme: points balance, promo codes and the points history."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

loyalty_accounts = sa.Table(
    "loyalty_accounts",
    metadata,
    sa.Column("customer_id", sa.String(32), primary_key=True),
    sa.Column("card_number", sa.String(20), nullable=False, unique=True),
    sa.Column("tier", sa.String(16), nullable=False),  # bronze, silver, gold
    sa.Column("points_balance", sa.Integer, nullable=False),
    sa.Column("birthday", sa.Date),  # for the birthday bonus
    sa.Column("enrolled_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("last_activity_at", sa.DateTime(timezone=True)),
)

loyalty_history = sa.Table(
    "loyalty_history",
    metadata,
    sa.Column("entry_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("customer_id", sa.String(32), nullable=False, index=True),
    sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),  # earn, redeem, expire, bonus, adjust
    sa.Column("points", sa.Integer, nullable=False),
    sa.Column("order_ref", sa.String(32)),
    sa.Column("note", sa.String(200)),
)

promo_codes = sa.Table(
    "promo_codes",
    metadata,
    sa.Column("code", sa.String(32), primary_key=True),
    sa.Column("customer_id", sa.String(32), nullable=False, index=True),
    sa.Column("kind", sa.String(16), nullable=False),  # welcome, birthday, reward, goodwill
    sa.Column("discount_percent", sa.Integer),
    sa.Column("discount_amount", sa.Numeric(10, 2)),
    sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expires_on", sa.Date, nullable=False),
    sa.Column("redeemed_at", sa.DateTime(timezone=True)),
    sa.Column("order_ref", sa.String(32)),
)
