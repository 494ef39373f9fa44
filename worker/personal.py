"""The subject's own values in what a call hands back: found (``names_subject``) or cut out (``redact``).

A connector's texts (an error message, a detail, a retained category) are stored, published in receipt.v1 on a
compacted topic for good, and logged. The shipped connectors write them from fixed words and safe codes, but a
connector loaded through the dotted-module extension point may quote what it was given ("customer C-100234 not
found"), and a vendor may echo it. So every text a call returns passes here once, in the executor, before the
store, the logs and the receipts see it: the shapes the logs redact (``worker.logs``: email addresses, phone
numbers) and the subject's own values.
"""

from __future__ import annotations

import re

from worker import logs
from worker.core.connector import Subject

# Shorter values are matched whole only: a customer id "42" is part of too many honest texts ("HTTP 429").
MIN_CONTAINED = 4
# A phone number in another format (national, no "+", spaced) still ends in its subscriber number.
PHONE_TAIL = 8
_NOT_DIGITS = re.compile(r"\D+")


def subject_values(subject: Subject) -> list[str]:
    """Every value that names the subject, case-folded, longest first (so a longer one is cut before its parts)."""
    values = [subject.customer_id, *subject.emails, *subject.phones,
              *(value for ids in subject.identifiers.values() for value in ids)]
    values += [email.split("@", 1)[0] for email in subject.emails]  # the local part alone names the person too
    folded = {v.strip().casefold() for v in values if isinstance(v, str)} - {""}
    return sorted(folded, key=len, reverse=True)


def names_subject(text: str, subject: Subject) -> bool:
    """Whether ``text`` holds one of the subject's own values (or the tail of one of its phone numbers)."""
    return _names(text, subject_values(subject), _phone_tails(subject))


def _names(text: str, values: list[str], tails: list[str]) -> bool:
    folded = text.casefold()
    if any(value == folded or (len(value) >= MIN_CONTAINED and value in folded) for value in values):
        return True
    digits = _NOT_DIGITS.sub("", folded)
    return any(tail in folded or tail in digits for tail in tails)


def redact(text: str, subject: Subject) -> str:
    """``text`` with email addresses, phone numbers and the subject's own values replaced by ``[redacted]``."""
    cleaned = logs.scrub(text)
    values, tails = subject_values(subject), _phone_tails(subject)
    if not _names(cleaned, values, tails):
        return cleaned
    if cleaned.casefold() in values:
        return logs.REDACTED
    for value in values:
        if len(value) >= MIN_CONTAINED:
            cleaned = re.sub(re.escape(value), logs.REDACTED, cleaned, flags=re.IGNORECASE)
    for tail in tails:
        # The tail written with separators ("12 34 56 78") as well as glued.
        spread = r"[\s.\-()]*".join(re.escape(digit) for digit in tail)
        cleaned = re.sub(rf"\d*{spread}", logs.REDACTED, cleaned)
    return cleaned


def _phone_tails(subject: Subject) -> list[str]:
    tails = (_NOT_DIGITS.sub("", phone)[-PHONE_TAIL:] for phone in subject.phones if isinstance(phone, str))
    return [tail for tail in tails if len(tail) == PHONE_TAIL]
