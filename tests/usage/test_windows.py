"""Window math, pure: RFC 3339 parsing, local-midnight days across DST, odd offsets, and the
part of a query that rollup buckets can answer."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from importlib import resources
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.usage.windows import (
    HOUR_BUCKET,
    TooManyWindows,
    WindowSize,
    format_instant,
    is_bucket_aligned,
    next_boundary,
    parse_rfc3339,
    rollup_span,
    rollup_spans,
    window_bounds,
    window_start,
)

ZONES = sorted(resources.files("tzdata").joinpath("zones").read_text().split())


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-05-07T14:00:00Z", utc(2025, 5, 7, 14)),
        ("2025-05-07t14:00:00z", utc(2025, 5, 7, 14)),
        ("2025-05-07T16:00:00+02:00", utc(2025, 5, 7, 14)),
        ("2025-05-07T09:15:00-04:45", utc(2025, 5, 7, 14)),
        ("2025-05-07T14:00:00.25Z", utc(2025, 5, 7, 14, 0, 0, 250000)),
        ("2025-05-07T14:00:00.0000001Z", utc(2025, 5, 7, 14, 0, 0, 1)),  # rounds up
        ("2025-05-07T14:00:00.1234560000Z", utc(2025, 5, 7, 14, 0, 0, 123456)),
        ("2016-12-31T23:59:60Z", utc(2017, 1, 1)),
    ],
)
def test_parse_rfc3339(text: str, expected: datetime) -> None:
    assert parse_rfc3339(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "2025-05-07",
        "2025-05-07T14:00:00",
        "2025-05-07 14:00:00Z",
        "2025-05-07T14:00Z",
        "2025-13-01T00:00:00Z",
        "2025-05-07T14:00:00+24:00",
        "x",
        "2025-05-07T14:00:00.Z",
    ],
)
def test_parse_rfc3339_refuses(text: str) -> None:
    with pytest.raises(ValueError, match=r"RFC 3339|valid|offset"):
        parse_rfc3339(text)


def test_format_instant() -> None:
    assert format_instant(utc(2025, 5, 7, 14)) == "2025-05-07T14:00:00Z"
    assert format_instant(utc(2025, 5, 7, 14, 0, 0, 500000)) == "2025-05-07T14:00:00.5Z"


def _days(zone: str, start: datetime, end: datetime) -> list[tuple[str, float]]:
    bounds = window_bounds(start, end, WindowSize.DAY, ZoneInfo(zone))
    return [
        (a.astimezone(ZoneInfo(zone)).isoformat(), (b - a).total_seconds() / 3600)
        for a, b in pairwise(bounds)
    ]


def test_dst_days_last_23_and_25_hours() -> None:
    assert _days("America/Los_Angeles", utc(2025, 3, 8, 12), utc(2025, 3, 10, 12)) == [
        ("2025-03-08T00:00:00-08:00", 24),
        ("2025-03-09T00:00:00-08:00", 23),
        ("2025-03-10T00:00:00-07:00", 24),
    ]
    assert _days("Europe/Berlin", utc(2025, 10, 25, 12), utc(2025, 10, 27, 12)) == [
        ("2025-10-25T00:00:00+02:00", 24),
        ("2025-10-26T00:00:00+02:00", 25),
        ("2025-10-27T00:00:00+01:00", 24),
    ]


def test_a_skipped_midnight_starts_the_day_at_the_change() -> None:
    # Santiago springs forward at 00:00 → 01:00; Asunción falls back at 00:00 → 23:00.
    assert _days("America/Santiago", utc(2024, 9, 7, 12), utc(2024, 9, 8, 12)) == [
        ("2024-09-07T00:00:00-04:00", 24),
        ("2024-09-08T01:00:00-03:00", 23),
    ]
    days = _days("America/Asuncion", utc(2024, 3, 23, 12), utc(2024, 3, 24, 12))
    assert days == [("2024-03-23T00:00:00-03:00", 25), ("2024-03-24T00:00:00-04:00", 24)]


def test_odd_offsets() -> None:
    start, end = utc(2025, 1, 1), utc(2025, 1, 1, 3)
    kathmandu = window_bounds(start, end, WindowSize.HOUR, ZoneInfo("Asia/Kathmandu"))
    assert [format_instant(b) for b in kathmandu] == [
        "2024-12-31T23:15:00Z",
        "2025-01-01T00:15:00Z",
        "2025-01-01T01:15:00Z",
        "2025-01-01T02:15:00Z",
        "2025-01-01T03:15:00Z",
    ]
    assert window_start(start, WindowSize.DAY, ZoneInfo("Asia/Kolkata")) == utc(
        2024, 12, 31, 18, 30
    )
    # Lord Howe moves by 30 minutes: the hour that straddles the change is cut at it.
    lord_howe = window_bounds(
        utc(2025, 4, 5, 14), utc(2025, 4, 5, 17), WindowSize.HOUR, ZoneInfo("Australia/Lord_Howe")
    )
    lengths = [(b - a).total_seconds() / 60 for a, b in pairwise(lord_howe)]
    assert lengths == [60, 30, 60, 60]


def test_window_limit() -> None:
    start = utc(2025, 5, 1)
    assert (
        len(window_bounds(start, start + timedelta(minutes=10_000), WindowSize.MINUTE, UTC))
        == 10_001
    )
    with pytest.raises(TooManyWindows):
        window_bounds(start, start + timedelta(minutes=10_001), WindowSize.MINUTE, UTC)
    with pytest.raises(TooManyWindows):  # bounded work whatever the range
        window_bounds(utc(1900, 1, 1), utc(8999, 1, 1), WindowSize.MINUTE, UTC)


def test_rollup_span() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    start, end = utc(2025, 10, 25, 10, 7), utc(2025, 10, 27, 9, 59)
    days = window_bounds(start, end, WindowSize.DAY, berlin)
    assert rollup_span(start, end, days) == (utc(2025, 10, 25, 10, 15), utc(2025, 10, 27, 9, 45))
    minutes = window_bounds(start, end, WindowSize.MINUTE, berlin)
    assert rollup_span(start, end, minutes) is None
    assert rollup_span(utc(2025, 1, 1, 10, 1), utc(2025, 1, 1, 10, 14), [utc(2025, 1, 1)]) is None
    # Hourly buckets where every boundary is a whole UTC hour: Berlin yes, Kolkata no.
    assert rollup_span(start, end, days, HOUR_BUCKET) == (
        utc(2025, 10, 25, 11),
        utc(2025, 10, 27, 9),
    )
    kolkata = window_bounds(start, end, WindowSize.DAY, ZoneInfo("Asia/Kolkata"))
    assert rollup_span(start, end, kolkata) is not None
    assert rollup_span(start, end, kolkata, HOUR_BUCKET) is None
    quarter = (utc(2025, 10, 25, 10, 15), utc(2025, 10, 27, 9, 45))
    assert rollup_spans(start, end, days) == (
        quarter,
        (utc(2025, 10, 25, 11), utc(2025, 10, 27, 9)),
    )
    assert rollup_spans(start, end, kolkata) == (quarter, (quarter[1], quarter[1]))
    assert rollup_spans(start, end, minutes) == ((end, end), (end, end))
    # Local mean time of 1890 is not on the 15-minute grid: raw events answer.
    old = window_bounds(utc(1890, 1, 1), utc(1890, 1, 3), WindowSize.DAY, berlin)
    assert rollup_span(utc(1890, 1, 1), utc(1890, 1, 3), old) is None


@settings(max_examples=300, deadline=None)
@given(
    zone=st.sampled_from(ZONES),
    size=st.sampled_from(list(WindowSize)),
    start=st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2037, 12, 31)),
    minutes=st.integers(1, 40 * 24 * 60),
)
def test_windows_partition_the_range(
    zone: str, size: WindowSize, start: datetime, minutes: int
) -> None:
    tz = ZoneInfo(zone)
    first = start.replace(tzinfo=UTC)
    unit = {WindowSize.MINUTE: 1, WindowSize.HOUR: 60, WindowSize.DAY: 24 * 60}[size]
    end = first + timedelta(minutes=min(minutes, unit * 500))
    bounds = window_bounds(first, end, size, tz)
    assert bounds[0] <= first < bounds[1] and bounds[-2] < end <= bounds[-1]
    for a, b in pairwise(bounds):
        assert a < b
        assert window_start(a, size, tz) == a and next_boundary(a, size, tz) == b
        assert window_start(b - timedelta(microseconds=1), size, tz) == a
        offset_changed = (
            a.astimezone(tz).utcoffset() != (a - timedelta(seconds=1)).astimezone(tz).utcoffset()
        )
        local = a.astimezone(tz)
        if size is WindowSize.DAY:
            # The first instant of its local date (midnight unless a change skipped it).
            assert (a - timedelta(microseconds=1)).astimezone(tz).date() < local.date() or (
                offset_changed
            )
            assert local.time().isoformat() == "00:00:00" or offset_changed
            assert timedelta(hours=20) <= b - a <= timedelta(hours=28)
        else:
            assert (local.minute if size is WindowSize.HOUR else 0, local.second) == (0, 0) or (
                offset_changed
            )
            assert b - a <= timedelta(minutes=unit)
        if zone in ("UTC", "Europe/Berlin", "America/Los_Angeles", "Asia/Kathmandu") and (
            size is not WindowSize.MINUTE and a.year >= 1980
        ):
            assert is_bucket_aligned(a)
