"""The retention sweeper (SPEC §6): ``oubli sweep`` turns expired data into ordinary erasure commands.

The rules are config (``retention.rules``, see ``worker.config.RetentionRule``), not code. Each rule
names a source system (its database is the one in that system's ``settings.url``), a table, the
column naming the subject (``key``: a customer id, or an email), the timestamp column(s), a period,
the systems the erasure targets (``null``: every system) and checks (``unless``) that keep a subject.
The sweeper only emits commands; the worker does the erasing, with its retries, receipts and audit
trail. Commands are deterministic (``worker.retention.commands``), so that repeated or overlapping
sweeps are deduplicated by ``request_id``.

When a subject expires (``expires_when``):

* ``all_rows`` (the default): when its *newest* row is past the period. This is the only safe choice
  when the target system's erasure deletes all of the subject's rows at once, as ``contact_forms``
  does: emitting on the oldest message would also delete a message received yesterday, perhaps not
  yet answered. The trade-off: an old message is kept until the subject's latest message is a year
  old, i.e. the period runs from the subject's last contact, not from each message. The command
  schema is closed and cannot ask for "messages before date D" only; a strict per-message limit
  needs a purge in the contact-forms database itself (or a per-row retention in its connector).
* ``any_row``: when its *oldest* row is past the period. Right only when the target system keeps
  rows still inside their period by itself, as ``orders_db`` does for invoices (kept until
  ``billing_retention_years`` after their due date, reduced to what the law needs).

Billing: an account erased earlier keeps its invoices under the legal-retention exception until
their date, and nothing else would ever touch them again. The ``expired-invoices`` rule (the
example in docs/retention.md) emits an ``orders_db``-only erasure, ``any_row``, for invoices whose period
has ended and whose account no longer exists (``unless: [{table: customers, key: customer_id}]``);
``orders_db`` then anonymises the expired invoices and keeps the rest. Each expiry date gives a new
request. Invoices of accounts that still exist are not touched: an erasure would delete the account.

``requested_at`` of an emitted command is the moment the data expired, so that every sweep builds
the same command; a backlog therefore shows as overdue, which it is.
"""

from worker.retention.sweep import RuleReport, SweepReport, sweep

__all__ = ["RuleReport", "SweepReport", "sweep"]
