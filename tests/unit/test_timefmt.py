"""``iso``: RFC 3339 in UTC to the millisecond, the same text for the same instant, whatever its zone or
whether it was formatted before (it is cached per datetime)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from worker.core.timefmt import iso


def test_the_same_instant_in_any_zone_or_naive_as_utc_prints_one_text() -> None:
    utc = datetime(2026, 12, 3, 7, 30, 15, 123456, tzinfo=UTC)
    paris = utc.astimezone(timezone(timedelta(hours=1)))
    naive = utc.replace(tzinfo=None)  # SQLite hands back naive datetimes, which are UTC
    assert [iso(utc), iso(paris), iso(naive), iso(paris)] == ["2026-12-03T07:30:15.123Z"] * 4


def test_different_instants_never_share_a_text() -> None:
    base = datetime(2026, 12, 3, 7, 30, tzinfo=UTC)
    texts = {iso(base + timedelta(milliseconds=n)) for n in range(3000)}
    assert len(texts) == 3000
    assert iso(base.replace(tzinfo=None) + timedelta(hours=1)) == "2026-12-03T08:30:00.000Z"
    assert iso(None) is None
