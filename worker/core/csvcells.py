"""CSV cells a spreadsheet reads as text, never as a formula (OWASP, "CSV Injection").

Excel, LibreOffice and Google Sheets evaluate a cell that starts with ``=``, ``+``, ``-`` or ``@``, and
also one where a tab or carriage return comes before such a character. A request id, a vendor's
value or a subject's own text can start that way; opened by the privacy team or the subject, it would
run ``=HYPERLINK(…)`` or ``=WEBSERVICE(…)`` and send other cells away. A leading apostrophe makes the
spreadsheet show the text as it is; parsers of the CSV see the apostrophe.
"""

from __future__ import annotations

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(text: str) -> str:
    """``text`` prefixed with ``'`` when a spreadsheet would evaluate it; otherwise unchanged.

    For strings only: numbers are written by the caller as numbers (a negative amount stays ``-12.5``).
    """
    return f"'{text}" if text.startswith(FORMULA_STARTS) else text
