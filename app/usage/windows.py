"""Window math of the usage query: pure functions over UTC instants and IANA zones.

A DAY window starts at the first instant of a local date: local midnight, or the first instant
after it where a DST change skips midnight. DST days therefore last 23 or 25 hours. HOUR and
MINUTE windows start where the local wall clock shows a whole hour or minute, so they last
exactly one unit of UTC time; only where an offset changes by less than a unit (Lord Howe's
30-minute DST, historic local mean time) does a window end early, at the change.

Rollups are kept in 15-minute and in 1-hour buckets of UTC time. Every offset in use today is a
multiple of 15 minutes, so HOUR and DAY windows are whole runs of 15-minute buckets (and, in
whole-hour zones, of hourly ones); `rollup_span` says which part of a query each grain can
answer, and the rest is read from raw events.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from enum import StrEnum

BUCKET = timedelta(minutes=15)
# Also kept in hours: a whole-hour zone's HOUR and DAY windows read four times fewer rows.
HOUR_BUCKET = timedelta(hours=1)
BUCKET_ORIGIN = datetime(2000, 1, 1, tzinfo=UTC)  # any whole hour of UTC would do
MAX_WINDOWS = 10_000

_SECOND = timedelta(seconds=1)


class WindowSize(StrEnum):
    MINUTE = "MINUTE"
    HOUR = "HOUR"
    DAY = "DAY"


_UNIT_SECONDS = {WindowSize.MINUTE: 60, WindowSize.HOUR: 3600}


class TooManyWindows(ValueError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"more than {limit:,} windows")
        self.limit = limit


# RFC 3339 `date-time`: full date, `T`, full time with seconds, optional fraction, and a
# mandatory offset. `datetime.fromisoformat` alone would also take dates without a time or an
# offset, which RFC 3339 does not allow.
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:([Zz])|([+-])(\d{2}):(\d{2}))"
)


def parse_rfc3339(text: str) -> datetime:
    """An RFC 3339 date-time as an aware UTC datetime; ValueError when it is not one.

    Fractions beyond microseconds round up: events are stored to the microsecond, so a bound
    `t` and its ceiling select the same events. A leap second (`:60`) is the next second, as
    in POSIX time."""
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise ValueError("must be an RFC 3339 date-time such as 2025-05-07T14:00:00Z")
    year, month, day, hour, minute, second = (int(g) for g in match.group(1, 2, 3, 4, 5, 6))
    fraction = match.group(7) or ""
    micro = int(fraction[:6].ljust(6, "0"))
    round_up = any(c != "0" for c in fraction[6:])
    offset = timedelta(0)
    if match.group(9) is not None:
        hours, minutes = int(match.group(10)), int(match.group(11))
        if hours > 23 or minutes > 59:
            raise ValueError("has an invalid UTC offset")
        offset = timedelta(hours=hours, minutes=minutes)
        if match.group(9) == "-":
            offset = -offset
    leap = second == 60
    try:
        value = datetime(year, month, day, hour, minute, 59 if leap else second, micro, tzinfo=UTC)
    except ValueError as exc:
        raise ValueError(f"is not a valid date-time ({exc})") from None
    value -= offset
    if leap:
        value += _SECOND
    if round_up:
        value += timedelta(microseconds=1)
    return value


def format_instant(value: datetime) -> str:
    """`YYYY-MM-DDTHH:MM:SSZ` in UTC; a fraction only when the instant has one."""
    value = value.astimezone(UTC)
    text = value.strftime("%Y-%m-%dT%H:%M:%S")
    if value.microsecond:
        text += f".{value.microsecond:06d}".rstrip("0")
    return text + "Z"


def window_bounds(
    start: datetime, end: datetime, size: WindowSize, zone: tzinfo, *, limit: int = MAX_WINDOWS
) -> list[datetime]:
    """Boundaries `b[0] <= start < b[1] < … < b[n-1] < end <= b[n]` of the n windows that
    intersect [start, end); window i is [b[i], b[i+1]). Raises `TooManyWindows` past `limit`."""
    if not start < end:
        raise ValueError("start must be before end")
    bounds = [window_start(start, size, zone)]
    while bounds[-1] < end:
        if len(bounds) > limit:
            raise TooManyWindows(limit)
        bounds.append(next_boundary(bounds[-1], size, zone))
    return bounds


def window_start(instant: datetime, size: WindowSize, zone: tzinfo) -> datetime:
    """Start of the window that contains `instant`."""
    if size is WindowSize.DAY:
        return day_start(local_day(instant, zone), zone)
    unit = _UNIT_SECONDS[size]
    offset = _offset(instant, zone)
    local = instant + offset
    into = timedelta(
        seconds=(local.hour * 3600 + local.minute * 60 + local.second) % unit,
        microseconds=local.microsecond,
    )
    start = instant - into
    if _offset(start, zone) != offset:
        # The offset changed inside the unit: the window starts at the change.
        start = _first_change(start, _floor_second(instant), zone)
    return start


def next_boundary(boundary: datetime, size: WindowSize, zone: tzinfo) -> datetime:
    """The window boundary after `boundary` (which must itself be one)."""
    if size is WindowSize.DAY:
        return day_start(local_day(boundary, zone) + timedelta(days=1), zone)
    unit = _UNIT_SECONDS[size]
    offset = _offset(boundary, zone)
    local = boundary + offset
    into = (local.hour * 3600 + local.minute * 60 + local.second) % unit
    candidate = boundary + timedelta(seconds=unit - into)
    if _offset(candidate - _SECOND, zone) != offset:
        # An offset change inside the window (not on a whole unit) ends it early.
        return _first_change(boundary, candidate - _SECOND, zone)
    return candidate


def day_start(day: date, zone: tzinfo) -> datetime:
    """First instant of local date `day`. `fold=0` resolves a skipped midnight to the instant of
    the change (the first one of the day) and a repeated midnight to its first occurrence."""
    return datetime.combine(day, time(), tzinfo=zone).astimezone(UTC)


def local_day(instant: datetime, zone: tzinfo) -> date:
    """The local date whose DAY window contains `instant`. Usually the wall-clock date; after
    a change that sets the clock back across midnight (Asunción, Santiago) the repeated hour of
    the previous date still belongs to the new day."""
    day = instant.astimezone(zone).date()
    while day_start(day, zone) > instant:
        day -= timedelta(days=1)
    while day_start(day + timedelta(days=1), zone) <= instant:
        day += timedelta(days=1)
    return day


def floor_bucket(instant: datetime, width: timedelta = BUCKET) -> datetime:
    return instant - (instant - BUCKET_ORIGIN) % width


def ceil_bucket(instant: datetime, width: timedelta = BUCKET) -> datetime:
    floor = floor_bucket(instant, width)
    return floor if floor == instant else floor + width


def is_bucket_aligned(instant: datetime, width: timedelta = BUCKET) -> bool:
    return (instant - BUCKET_ORIGIN) % width == timedelta(0)


def rollup_span(
    start: datetime, end: datetime, bounds: Sequence[datetime], width: timedelta = BUCKET
) -> tuple[datetime, datetime] | None:
    """The whole `width` buckets inside [start, end) that each lie within one window, as one
    range [first, last) — or None when there are none: a window boundary inside the range off
    the bucket grid (MINUTE windows; HOUR-bucket spans in half-hour zones; local mean time)
    means the buckets cannot be assigned to windows, so that part is read at a finer grain."""
    first, last = ceil_bucket(start, width), floor_bucket(end, width)
    if first >= last:
        return None
    if any(first < b < last and not is_bucket_aligned(b, width) for b in bounds):
        return None
    return first, last


Span = tuple[datetime, datetime]


def rollup_spans(start: datetime, end: datetime, bounds: Sequence[datetime]) -> tuple[Span, Span]:
    """(the part of [start, end) read from rollups, the part of that read from hourly buckets —
    the rest of it from 15-minute ones). A part that is empty is given as [end, end)."""
    quarter = rollup_span(start, end, bounds) or (end, end)
    hour = rollup_span(*quarter, bounds, HOUR_BUCKET) or (quarter[1], quarter[1])
    return quarter, hour


def _offset(instant: datetime, zone: tzinfo) -> timedelta:
    offset = instant.astimezone(zone).utcoffset()
    assert offset is not None  # an IANA zone always has one
    return offset


def _floor_second(instant: datetime) -> datetime:
    return instant.replace(microsecond=0)


def _first_change(before: datetime, after: datetime, zone: tzinfo) -> datetime:
    """The first whole second in (before, after] whose offset is that of `after`, given that
    `before` has a different one. Offsets change on whole seconds, at most once in a unit."""
    target = _offset(after, zone)
    low, high = 0, int((after - before).total_seconds())
    while high - low > 1:
        middle = (low + high) // 2
        if _offset(before + timedelta(seconds=middle), zone) == target:
            high = middle
        else:
            low = middle
    return before + timedelta(seconds=high)
