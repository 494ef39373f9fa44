"""Customer Match hashing: normalisation and SHA-256 hex checked against known vectors.

The expected digests were computed independently (``printf '%s' VALUE | sha256sum``).
"""

from __future__ import annotations

import hashlib
import hmac

import pytest

from connectors.google_ads import (
    canonical_gmail,
    email_hashes,
    normalize_email,
    normalize_phone,
    sha256_hex,
)
from worker.core.identifiers import keyed_hash, normalise_email

VECTORS = {
    "marie.dupont@example.fr": "5c90285452dff6c6cfa9163f35b0078e5b116976f3216ba662e5c66399f43918",
    "jeanpaul@example.com": "a2b88c3b9a37702d7887cb4c8d4ec7e060b223fb249c0ba20c371380aa75a426",
    "cloudy.sanfrancisco+shopping@gmail.com": "8dd4a9bf850242873c14976125edabc35096192b784626a5641a7d2de56e3c1e",
    "cloudysanfrancisco@gmail.com": "223ebda6f6889b1494551ba902d9d381daf2f642bae055888e96343d53e9f9c4",
    "user.name+nyc@example.com": "f109a2a632fbcea5fc82049f50beed3d8621bf9034399f437fb622222acccdac",
    "+33612345678": "42d573cfc315801d4cd8eddd5416b416a0bf298b9b9e12d6b07442c91db42bd8",
    "+18005550100": "fb4f73a6ec5fdb7077d564cdd22c3554b43ce49168550c3b12c547b78c517b30",
}


@pytest.mark.parametrize("value", sorted(VECTORS))
def test_sha256_hex_matches_known_vectors(value: str) -> None:
    assert sha256_hex(value) == VECTORS[value]


@pytest.mark.parametrize(("raw", "normalized"), [
    ("  Marie.Dupont@Example.FR \n", "marie.dupont@example.fr"),
    ("Jean Paul@Example.com", "jeanpaul@example.com"),  # intermediate whitespace goes too
    ("user.name+NYC@Example.com", "user.name+nyc@example.com"),  # dots and tags kept off gmail
])
def test_email_normalisation(raw: str, normalized: str) -> None:
    assert normalize_email(raw) == normalized


def test_gmail_canonical_form_drops_dots_and_tag() -> None:
    assert canonical_gmail("cloudy.sanfrancisco+shopping@gmail.com") == "cloudysanfrancisco@gmail.com"
    assert canonical_gmail("a.b+c@googlemail.com") == "ab@googlemail.com"
    assert canonical_gmail("user.name+nyc@example.com") == "user.name+nyc@example.com"


def test_email_hashes_send_both_forms_for_gmail_and_one_otherwise() -> None:
    assert email_hashes(" Cloudy.SanFrancisco+Shopping@Gmail.com") == sorted([
        VECTORS["cloudy.sanfrancisco+shopping@gmail.com"], VECTORS["cloudysanfrancisco@gmail.com"]])
    assert email_hashes("Marie.Dupont@example.FR") == [VECTORS["marie.dupont@example.fr"]]


@pytest.mark.parametrize(("raw", "e164"), [
    ("+33612345678", "+33612345678"),
    ("+33 6 12 34 56 78", "+33612345678"),
    ("0033 6-12-34-56-78", "+33612345678"),
    ("+1 (800) 555-0100", "+18005550100"),  # Google's own example, (800)555-0100 in the US
    (" +1.800.555.0100 ", "+18005550100"),
])
def test_phone_normalisation_to_e164(raw: str, e164: str) -> None:
    assert normalize_phone(raw) == e164
    assert sha256_hex(normalize_phone(raw) or "") == VECTORS[e164]


@pytest.mark.parametrize("raw", ["0612345678", "(800)555-0100", "+0123456789", "+33 6 12 ab", "+1234"])
def test_phone_without_country_code_or_digits_is_refused(raw: str) -> None:
    assert normalize_phone(raw) is None


def test_hashes_are_lowercase_hex_of_64_chars() -> None:
    digest = sha256_hex(normalize_email("X@Y.Z"))
    assert len(digest) == 64 and digest == digest.lower() and int(digest, 16) >= 0


def test_email_normalisation_lowers_ascii_only() -> None:
    """Google documents trim and lower case; a Kelvin sign must not hash as someone else's ASCII k."""
    assert normalize_email("\u212aevin@x.fr") == "\u212aevin@x.fr" != normalize_email("Kevin@x.fr")
    assert normalize_email(" ÉLODIE@Example.FR ") == "Élodie@example.fr"


def test_keyed_hashes_of_ascii_emails_are_unchanged_and_the_kelvin_sign_is_its_own() -> None:
    """Tombstones and suppression lists made before ASCII-only folding must still match."""
    key = b"tombstone-key-0123456789"
    before = "hmac-sha256:" + hmac.new(key, b"marie.dupont@example.fr", hashlib.sha256).hexdigest()
    assert keyed_hash(key, "email", " Marie.Dupont@EXAMPLE.fr\t") == before
    assert keyed_hash(key, "email", "\u212aelvin@x.fr") != keyed_hash(key, "email", "kelvin@x.fr")
    assert normalise_email("\u00a0\u212aELVIN@X.FR ") == "\u212aelvin@x.fr"
