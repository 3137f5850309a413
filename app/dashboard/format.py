"""How the dashboard writes money, counts and times: pure functions, used as template filters.

Money is shown with a dot, at least two decimals and the currency symbol (`€12.34`). Amounts
from one cent up are rounded half-up to the cent; a non-zero amount below a cent keeps two
significant digits (`€0.0064`), so a small cost never reads as `€0.00`. Pages put the exact
amount in a `title` next to a rounded one.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import MAX_EMAX, MAX_PREC, MIN_EMIN, ROUND_HALF_UP, Context, Decimal
from zoneinfo import ZoneInfo

from app.money import money_str

SYMBOLS = {"EUR": "€", "USD": "$", "GBP": "£", "JPY": "¥", "CHF": "CHF "}
CENT = Decimal("0.01")
# Rounds to the cent and nothing else: the default context keeps 28 digits and refuses more,
# and a balance may have 38.
_WIDE = Context(prec=MAX_PREC, Emax=MAX_EMAX, Emin=MIN_EMIN, rounding=ROUND_HALF_UP)


def money(amount: Decimal | str, currency: str) -> str:
    value = Decimal(amount)
    sign = "-" if value < 0 else ""
    value = value.copy_abs()
    if value == 0 or value >= CENT:
        text = f"{value.quantize(CENT, context=_WIDE):,.2f}"
    else:
        # Two significant digits: 0.0064632 → 0.0065, 0.00000012 → 0.00000012.
        places = -value.adjusted() + 1
        text = f"{value.quantize(Decimal(1).scaleb(-places), context=_WIDE):f}"
    return f"{sign}{symbol(currency)}{text}"


def exact_money(amount: Decimal | str, currency: str) -> str:
    """Every decimal the ledger holds, e.g. for a `title`: `9.993616 EUR`."""
    return f"{money_str(Decimal(amount))} {currency.upper()}"


def symbol(currency: str) -> str:
    code = currency.upper()
    return SYMBOLS.get(code, f"{code} ")


def count(value: int) -> str:
    return f"{value:,}"


def weekday(value: date) -> str:
    """`Thu 7 May`: a day within a month already named."""
    return f"{value:%a} {value.day} {value:%b}"


def short_day(value: date) -> str:
    """`7 May`."""
    return f"{value.day} {value:%b}"


def instant(value: datetime | None) -> str:
    """`2026-05-07 14:03 UTC`, or an em dash for nothing."""
    if value is None:
        return "—"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def month_name(value: date) -> str:
    return value.strftime("%B %Y")


def in_zone(value: datetime, zone: str) -> str:
    """`8 May 00:00 CEST`: when a limit's period ends (within a month), in the limit's own
    zone, which is named beside the limit."""
    local = value.astimezone(ZoneInfo(zone))
    return f"{local.day} {local:%b %H:%M %Z}"


def input_time(value: datetime | None) -> str:
    """A `datetime-local` input's value in UTC (`2027-01-31T18:00`); blank for nothing. Seconds
    only when there are some, so a time set through the API is kept to the second."""
    if value is None:
        return ""
    utc = value.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S" if utc.second else "%Y-%m-%dT%H:%M")
