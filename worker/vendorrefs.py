"""Whether a connector's ``vendor_ref`` may be kept: it is stored, shown by ``oubli status`` and published
in receipt.v1 on a compacted topic, for good.

A vendor ref is the vendor's text (Google Ads' ``requestId``, a job id), and a vendor, a proxy or a
stand-in may echo what it was sent in its place: an email address, a phone number's digits, the
customer id. The connectors check the shape they expect where they can, but a plug-in connector or a
loose pattern (Google Ads' ids are any run of letters, digits, ``_`` and ``-``) lets such a value
through. So every ref a call returns is checked here once, in the executor, before the store sees it:
the shapes the logs redact (``worker.logs``), an ``@`` between two characters, any of the subject's own
values, and receipt.v1's bounds (a string of at most 256 printable characters; the store's column is
as wide, and a NUL makes PostgreSQL refuse the whole batch of results).

``refusal`` says why in words that quote nothing of the value, so the reason may go into an error
message, the audit trail and a receipt.
"""

from __future__ import annotations

from worker import logs, personal
from worker.core.connector import Subject

MAX_LENGTH = 256  # receipt.v1's vendor_ref maxLength, and tasks.vendor_ref


def refusal(vendor_ref: object, subject: Subject) -> str | None:
    """Why ``vendor_ref`` must not be stored, or ``None`` if it may. Never quotes the value."""
    if not isinstance(vendor_ref, str):
        return f"a vendor reference must be text, not {type(vendor_ref).__name__}"
    if not 0 < len(vendor_ref) <= MAX_LENGTH:
        return f"a vendor reference of {len(vendor_ref)} characters (1 to {MAX_LENGTH} fit a receipt)"
    if not vendor_ref.isprintable() or any("\ud800" <= c <= "\udfff" for c in vendor_ref):
        return "a vendor reference with control or unencodable characters"
    if logs.looks_personal(vendor_ref):
        return "a vendor reference that looks like an email address or a phone number"
    if personal.names_subject(vendor_ref, subject):
        return "a vendor reference that holds one of the subject's own identifiers"
    return None
