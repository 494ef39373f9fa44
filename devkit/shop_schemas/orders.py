"""The orders database: customer accounts, their orders and the billing trail.

``invoices.customer_id`` has no foreign key on purpose: invoices (and credit notes) outlive the
account under the billing-retention exception, so the account can be deleted while they stay.
``customer_identifiers`` holds the vendor ids (GA client ids, Facebook app-scoped ids, Shopimind
ids) that vendor connectors resolve through ``orders_db.create_identity_lookup``.
"""

from __future__ import annotations

import sqlalchemy as sa

from connectors.sql_config import normalised_email_sql

metadata = sa.MetaData()
_money = sa.Numeric(12, 2)

customers = sa.Table(
    "customers",
    metadata,
    sa.Column("customer_id", sa.String(32), primary_key=True),
    sa.Column("email", sa.String(254), nullable=False),
    sa.Column("first_name", sa.String(100)),
    sa.Column("last_name", sa.String(100)),
    sa.Column("phone", sa.String(32)),
    sa.Column("birth_date", sa.Date),
    sa.Column("company_name", sa.String(200)),
    sa.Column("company_contact", sa.String(200)),
    sa.Column("vat_number", sa.String(32)),
    sa.Column("classification", sa.String(32), nullable=False),  # individual, professional, public_body
    sa.Column("profession", sa.String(64)),
    sa.Column("self_description", sa.Text),  # "information provided by yourself"
    sa.Column("password_hash", sa.String(200)),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("last_login_at", sa.DateTime(timezone=True)),
)
sa.Index("ix_customers_email_norm", normalised_email_sql(customers.c.email))

addresses = sa.Table(
    "addresses",
    metadata,
    sa.Column("address_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("customer_id", sa.String(32), sa.ForeignKey("customers.customer_id"), nullable=False, index=True),
    sa.Column("kind", sa.String(16), nullable=False),  # billing, shipping
    sa.Column("recipient_name", sa.String(200), nullable=False),
    sa.Column("company_name", sa.String(200)),
    sa.Column("line1", sa.String(200), nullable=False),
    sa.Column("line2", sa.String(200)),
    sa.Column("postal_code", sa.String(16), nullable=False),
    sa.Column("city", sa.String(100), nullable=False),
    sa.Column("country", sa.String(2), nullable=False),
    sa.Column("phone", sa.String(32)),
    sa.Column("is_default", sa.Boolean, nullable=False),
)

consents = sa.Table(
    "consents",
    metadata,
    sa.Column("consent_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("customer_id", sa.String(32), sa.ForeignKey("customers.customer_id"), nullable=False, index=True),
    sa.Column("purpose", sa.String(32), nullable=False),  # email_marketing, sms_marketing, profiling, partners
    sa.Column("granted", sa.Boolean, nullable=False),
    sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("source", sa.String(32), nullable=False),  # account, checkout, customer_service
)

customer_identifiers = sa.Table(
    "customer_identifiers",
    metadata,
    sa.Column("identifier_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("customer_id", sa.String(32), sa.ForeignKey("customers.customer_id"), nullable=False, index=True),
    sa.Column("kind", sa.String(32), nullable=False),  # ga_client_id, facebook_user_id, shopimind_customer_id
    sa.Column("value", sa.String(128), nullable=False),
    sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("customer_id", "kind", "value"),
)

orders = sa.Table(
    "orders",
    metadata,
    sa.Column("order_id", sa.String(32), primary_key=True),
    sa.Column("customer_id", sa.String(32), sa.ForeignKey("customers.customer_id"), index=True),
    sa.Column("placed_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # placed, shipped, delivered, cancelled, returned
    sa.Column("channel", sa.String(16), nullable=False),  # web, phone, store
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("subtotal", _money, nullable=False),
    sa.Column("shipping_fee", _money, nullable=False),
    sa.Column("total", _money, nullable=False),
    sa.Column("email", sa.String(254)),
    sa.Column("phone", sa.String(32)),
    sa.Column("shipping_name", sa.String(200)),
    sa.Column("shipping_line1", sa.String(200)),
    sa.Column("shipping_postal_code", sa.String(16)),
    sa.Column("shipping_city", sa.String(100)),
    sa.Column("shipping_country", sa.String(2)),
    sa.Column("customer_note", sa.Text),
    sa.Column("promo_code", sa.String(32)),
)

order_lines = sa.Table(
    "order_lines",
    metadata,
    sa.Column("line_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("order_id", sa.String(32), sa.ForeignKey("orders.order_id"), nullable=False, index=True),
    sa.Column("sku", sa.String(32), nullable=False),
    sa.Column("product_name", sa.String(200), nullable=False),
    sa.Column("size", sa.String(16)),
    sa.Column("quantity", sa.Integer, nullable=False),
    sa.Column("unit_price", _money, nullable=False),
    sa.Column("vat_rate", sa.Numeric(5, 2), nullable=False),
    sa.Column("embroidery_text", sa.String(64)),  # personalised workwear: often a name
)

deliveries = sa.Table(
    "deliveries",
    metadata,
    sa.Column("delivery_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("order_id", sa.String(32), sa.ForeignKey("orders.order_id"), nullable=False, index=True),
    sa.Column("carrier", sa.String(32), nullable=False),
    sa.Column("tracking_number", sa.String(64)),
    sa.Column("shipped_at", sa.DateTime(timezone=True)),
    sa.Column("delivered_at", sa.DateTime(timezone=True)),
    sa.Column("recipient_name", sa.String(200)),
    sa.Column("address_line", sa.String(200)),
    sa.Column("postal_code", sa.String(16)),
    sa.Column("city", sa.String(100)),
    sa.Column("country", sa.String(2)),
    sa.Column("phone", sa.String(32)),
    sa.Column("instructions", sa.Text),
)

returns = sa.Table(
    "returns",
    metadata,
    sa.Column("return_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("order_id", sa.String(32), sa.ForeignKey("orders.order_id"), nullable=False, index=True),
    sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("reason_code", sa.String(32), nullable=False),  # size, defect, changed_mind, wrong_item
    sa.Column("comment", sa.Text),
    sa.Column("status", sa.String(16), nullable=False),  # requested, received, refunded, refused
    sa.Column("refund_amount", _money),
    sa.Column("pickup_address", sa.String(300)),
)

invoices = sa.Table(
    "invoices",
    metadata,
    sa.Column("invoice_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("invoice_number", sa.String(32), nullable=False, unique=True),
    sa.Column("kind", sa.String(16), nullable=False),  # invoice, credit_note
    sa.Column("order_id", sa.String(32), sa.ForeignKey("orders.order_id"), index=True),
    sa.Column("customer_id", sa.String(32), index=True),  # no FK: outlives the account (billing retention)
    sa.Column("issued_on", sa.Date, nullable=False),
    sa.Column("due_on", sa.Date, nullable=False),
    sa.Column("paid_on", sa.Date),
    sa.Column("status", sa.String(16), nullable=False),  # paid, unpaid, refunded
    sa.Column("billing_name", sa.String(200)),
    sa.Column("billing_company", sa.String(200)),
    sa.Column("billing_line1", sa.String(200)),
    sa.Column("billing_postal_code", sa.String(16)),
    sa.Column("billing_city", sa.String(100)),
    sa.Column("billing_country", sa.String(2)),
    sa.Column("vat_number", sa.String(32)),
    sa.Column("email", sa.String(254)),
    sa.Column("phone", sa.String(32)),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("amount_excl_tax", _money, nullable=False),
    sa.Column("vat_amount", _money, nullable=False),
    sa.Column("amount_incl_tax", _money, nullable=False),
    sa.Column("payment_method", sa.String(16)),
)
