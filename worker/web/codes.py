"""Confirmation codes: random, shown to the person once per call, kept only hashed and sealed.

Alphanumeric (lower-case hex), as Meta asks of a confirmation code; 160 random bits.

``sealed = code XOR HMAC(seal key, user id, generation)``: a copy of the store alone gives no code, and
the same user calling again (Meta may repeat a callback) gets the same code back.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

CODE_BYTES = 20  # 160 bits; 40 hex characters
_CODE_CHARS = frozenset("0123456789abcdef")


def new_code() -> str:
    return secrets.token_hex(CODE_BYTES)


def code_hash(code: str) -> str:
    # 160 random bits need no salt or stretching: a plain digest cannot be reversed or guessed.
    return hashlib.sha256(code.encode("ascii")).hexdigest()


def looks_like_code(text: str) -> bool:
    return len(text) == 2 * CODE_BYTES and set(text) <= _CODE_CHARS


def user_ref(subject_key: bytes, user_id: str) -> str:
    return "hmac-sha256:" + hmac.new(subject_key, f"facebook_user_id\0{user_id}".encode(), hashlib.sha256).hexdigest()


def _pad(subject_key: bytes, user_id: str, generation: int) -> bytes:
    seal_key = hmac.new(subject_key, b"oubli-web-confirmation-seal", hashlib.sha256).digest()
    return hmac.new(seal_key, f"{user_id}\0{generation}".encode(), hashlib.sha256).digest()[:CODE_BYTES]


def seal(code: str, subject_key: bytes, user_id: str, generation: int) -> str:
    raw = bytes.fromhex(code)
    return bytes(a ^ b for a, b in zip(raw, _pad(subject_key, user_id, generation), strict=True)).hex()


def unseal(sealed: str, subject_key: bytes, user_id: str, generation: int) -> str:
    raw = bytes(a ^ b for a, b in zip(bytes.fromhex(sealed), _pad(subject_key, user_id, generation), strict=True))
    return raw.hex()
