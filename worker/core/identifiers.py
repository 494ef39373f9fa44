"""Identifiers as the connectors match them, and the keyed hashes oubli keeps of them.

One normalisation and one HMAC for every list of keyed hashes: the newsletter's suppression list
(per system, keyed by its ``suppression_key``) and the tombstones of erased subjects (for every
internal system, keyed by ``verification.tombstone_key``). Same value, same key: same hash, so a
hash can be matched again later but never read back. Emails ignore whitespace and ASCII case; phones
are E.164 as given, trimmed; customer ids and vendor ids are exact.

Only A-Z are lowered, never other letters. ``str.lower`` (and PostgreSQL's ``lower`` under most
collations) maps the Kelvin sign to an ASCII k and folds other letters onto addresses that belong to
someone else: an erasure for "\u212aelvin@x.fr" deleted kelvin@x.fr's subscription. A non-ASCII address
now matches only itself up to ASCII case; ``connectors.sql_config.normalised_email_sql`` is the SQL
twin. ASCII addresses normalise as they always did, so existing tombstones and suppression hashes
still match.
"""

from __future__ import annotations

import hashlib
import hmac
import string

WHITESPACE = (" ", "\t", "\n", "\r", "\u00a0")
PREFIX = "hmac-sha256:"
ASCII_UPPER, ASCII_LOWER = string.ascii_uppercase, string.ascii_lowercase
_ASCII_FOLD = str.maketrans(ASCII_UPPER, ASCII_LOWER)


def strip_whitespace(value: str) -> str:
    for char in WHITESPACE:
        value = value.replace(char, "")
    return value


def ascii_lower(value: str) -> str:
    return value.translate(_ASCII_FOLD)


def normalise_email(value: str) -> str:
    return ascii_lower(strip_whitespace(value))


def normalise(kind: str, value: str) -> str:
    """``kind`` is ``email``, ``phone``, ``customer_id`` or a vendor identifier kind (``ga_client_id``...)."""
    if kind == "email":
        return normalise_email(value)
    if kind == "phone":
        return value.strip()
    return value


def keyed_hash(key: bytes, kind: str, value: str) -> str:
    """HMAC-SHA256 of the normalised value. The kind is not hashed in: an email's hash is the same in
    the suppression list and in a tombstone made with the same key; the kind is kept beside the hash."""
    digest = hmac.new(key, normalise(kind, value).encode("utf-8"), hashlib.sha256).hexdigest()
    return PREFIX + digest
