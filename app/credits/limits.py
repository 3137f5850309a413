"""Spend limits (SPEC 3.6): a key's, and the one an account applies to each of its end users.

A limit is `{"amount", "period", "timezone"}`. Its periods are calendar periods in its time
zone: a local day, an ISO week from Monday, a calendar month, or all time. The credit hold
checks it in the statement that checks the balance (app/credits/repository.py), against a
counter per limited subject that holds and settlements move; this module holds the pure
parts: parsing, the periods, and the SQL expressions that compute the same periods in
Postgres, so Python and SQL can never disagree about where a period starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from functools import cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from app.money import money_str, parse_money

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)  # where a `total` period starts


class LimitPeriod(StrEnum):
    DAY = "day"
    WEEK = "week"
    MONTH = "month"
    TOTAL = "total"


class LimitRefusal(StrEnum):
    """Why a credit hold was refused, when it was (`HoldOutcome.refusal`)."""

    CREDIT = "credit"
    SUSPENDED = "suspended"
    KEY_LIMIT = "key_limit"
    USER_LIMIT = "user_limit"


def key_subject(api_key_id: object) -> str:
    return f"key:{api_key_id}"


def user_subject(user: str) -> str:
    return f"user:{user}"


@dataclass(frozen=True, slots=True)
class SpendLimit:
    amount: Decimal
    period: LimitPeriod
    timezone: str

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def stored(self) -> dict[str, str]:
        """As kept on the account row, and read by the hold statement."""
        return {"amount": str(self.amount), "period": self.period.value, "timezone": self.timezone}

    def view(self) -> dict[str, str]:
        return {
            "amount": money_str(self.amount),
            "period": self.period.value,
            "timezone": self.timezone,
        }

    def same_periods(self, other: SpendLimit | None) -> bool:
        """Whether `other` counts spend over the same periods (only its amount differs)."""
        return other is not None and other.period is self.period and other.timezone == self.timezone

    @classmethod
    def from_stored(cls, stored: dict[str, str] | None) -> SpendLimit | None:
        if stored is None:
            return None
        return cls(Decimal(stored["amount"]), LimitPeriod(stored["period"]), stored["timezone"])


class InvalidLimit(ValueError):
    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def parse_spend_limit(value: object, *, field: str) -> SpendLimit | None:
    """A limit from a request body (None removes it); InvalidLimit names what is wrong."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidLimit(f'{field} must be an object {{"amount", "period", "timezone"}}', field)
    unknown = set(value) - {"amount", "period", "timezone"}
    if unknown:
        raise InvalidLimit(f"{field} has unknown fields: {', '.join(sorted(unknown))}", field)
    try:
        amount = parse_money(value.get("amount"), field=f"{field}.amount")
    except ValueError as exc:
        raise InvalidLimit(str(exc), f"{field}.amount") from exc
    if amount < 0:
        raise InvalidLimit(f"{field}.amount must not be negative", f"{field}.amount")
    period = value.get("period")
    if period not in set(LimitPeriod):
        raise InvalidLimit(
            f"{field}.period must be one of {', '.join(LimitPeriod)}", f"{field}.period"
        )
    zone = value.get("timezone", "UTC")
    if not isinstance(zone, str) or zone not in _zones():
        raise InvalidLimit(f"{field}.timezone must be an IANA time zone name", f"{field}.timezone")
    return SpendLimit(amount, LimitPeriod(period), zone)


@cache
def _zones() -> frozenset[str]:
    zones = set(available_timezones()) | {"UTC"}
    usable = set()
    for name in zones:
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            continue
        usable.add(name)
    return frozenset(usable)


def period_bounds(limit: SpendLimit | None, at: datetime) -> tuple[datetime, datetime | None]:
    """[start, end) of the period containing `at` (UTC without a limit); end None for total."""
    period = LimitPeriod.MONTH if limit is None else limit.period
    zone = ZoneInfo("UTC") if limit is None else limit.zone
    return calendar_period(period, zone, at)


def calendar_period(
    period: LimitPeriod, zone: ZoneInfo, at: datetime
) -> tuple[datetime, datetime | None]:
    if period is LimitPeriod.TOTAL:
        return EPOCH, None
    local = at.astimezone(zone)
    day = local.date()
    if period is LimitPeriod.WEEK:
        day -= timedelta(days=day.weekday())
    elif period is LimitPeriod.MONTH:
        day = day.replace(day=1)
    if period is LimitPeriod.DAY:
        following = day + timedelta(days=1)
    elif period is LimitPeriod.WEEK:
        following = day + timedelta(days=7)
    else:
        following = (day.replace(day=28) + timedelta(days=4)).replace(day=1)
    return _midnight(day, zone), _midnight(following, zone)


def _midnight(day: date, zone: ZoneInfo) -> datetime:
    """Local midnight of `day` as an instant, as Postgres's `date_trunc(…, zone)` puts it,
    which the hold uses: where midnight happened twice (clocks back at 01:00), the second;
    where it never happened (clocks forward at 00:00), the offset before the jump."""
    naive = datetime(day.year, day.month, day.day)
    first = naive.replace(tzinfo=zone, fold=0)
    second = naive.replace(tzinfo=zone, fold=1)
    if first.utcoffset() != second.utcoffset() and _exists(second, naive):
        return second.astimezone(UTC)
    return first.astimezone(UTC)


def _exists(local: datetime, naive: datetime) -> bool:
    return local.astimezone(UTC).astimezone(local.tzinfo).replace(tzinfo=None) == naive


def seconds_until(end: datetime | None, now: datetime) -> int | None:
    """`Retry-After` for a period ending at `end`: whole seconds, at least 1; None for total."""
    if end is None:
        return None
    return max(1, int(-(-(end - now).total_seconds() // 1)))


# ── The same periods in SQL ─────────────────────────────────────────────────────────────────
# `spend_limit` is an expression of a stored limit (jsonb), `at` one of a timestamptz.


def period_start_sql(spend_limit: str, at: str) -> str:
    return (
        f"CASE {spend_limit} ->> 'period' WHEN 'total' THEN TIMESTAMPTZ '1970-01-01 00:00Z' "
        f"ELSE date_trunc({spend_limit} ->> 'period', {at}, {spend_limit} ->> 'timezone') END"
    )


def period_end_sql(spend_limit: str, at: str) -> str:
    # The next period's first local midnight, from local time: a local day lasts 23 or 25
    # hours on DST days, and one that began in a gap still ends at midnight.
    zone = f"({spend_limit} ->> 'timezone')"
    return (
        f"CASE {spend_limit} ->> 'period' WHEN 'total' THEN NULL ELSE "
        f"(date_trunc({spend_limit} ->> 'period', {at} AT TIME ZONE {zone}) "
        f"+ CAST('1 ' || ({spend_limit} ->> 'period') AS interval)) AT TIME ZONE {zone} END"
    )
