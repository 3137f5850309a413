"""Invoice arithmetic and wording: pure functions, exact Decimal.

Rounding rule (SPEC 3.4): each line's exact amount (the sum of the exact charge lines of its
usage events) is rounded half-up to the currency's minor unit; the subtotal is the sum of the
rounded line amounts, so the printed lines always add up to the printed subtotal. The exact
amounts are kept beside the rounded ones.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

from app.money import money_str
from app.payments.currency import minor_unit

PERIOD_RE = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")

# Display order of the kinds of usage within a model, and their wording.
KIND_LABELS: dict[str, str] = {
    "input_tokens": "input tokens",
    "cached_input_tokens": "cached input tokens",
    "output_tokens": "output tokens",
    "images": "input images",
    "search_requests": "web search requests",
    "embedding_tokens": "embedding tokens",
    "image_generations": "generated images",
    "audio_seconds": "audio seconds (transcription)",
    "speech_characters": "speech characters",
    "usage": "usage (not itemised)",
}
_KIND_ORDER = {kind: i for i, kind in enumerate(KIND_LABELS)}
_UNITS = {
    "input_tokens": "tokens",
    "cached_input_tokens": "tokens",
    "output_tokens": "tokens",
    "embedding_tokens": "tokens",
    "speech_characters": "characters",
    "search_requests": "requests",
    "images": "image",
    "image_generations": "image",
    "audio_seconds": "minute",
}
SEARCH_SUFFIXES = ("-online", "-deep")


@dataclass(frozen=True, slots=True)
class Period:
    """A calendar month of UTC time, `[start, end)`."""

    start: datetime
    end: datetime

    @property
    def month(self) -> date:
        return self.start.date()

    @property
    def label(self) -> str:
        return self.start.strftime("%Y-%m")


def parse_period(text: str) -> Period:
    match = PERIOD_RE.match(text.strip())
    if match is None:
        raise ValueError(f"period must look like YYYY-MM (e.g. 2026-09), not {text!r}")
    return month_period(int(match.group(1)), int(match.group(2)))


def month_period(year: int, month: int) -> Period:
    start = datetime(year, month, 1, tzinfo=UTC)
    end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
    return Period(start, end)


def previous_period(now: datetime) -> Period:
    last_month = now.astimezone(UTC).replace(day=1) - timedelta(days=1)
    return month_period(last_month.year, last_month.month)


def invoice_number(year: int, sequence: int) -> str:
    return f"INV-{year}-{sequence:06d}"


@dataclass(frozen=True, slots=True)
class UsageAggregate:
    """Usage of one model and kind at one price in one month, summed from the charge lines of
    the usage events."""

    service_month: date
    model: str | None
    kind: str
    unit_price: Decimal  # price for `per` units, as in the rate table
    per: int
    quantity: int
    amount_exact: Decimal


@dataclass(frozen=True, slots=True)
class Line:
    description: str
    model: str | None
    kind: str
    service_month: date
    quantity: int
    unit_price: Decimal
    per: int
    amount_exact: Decimal
    amount: Decimal


def per_unit(unit_price: Decimal, per: int) -> Decimal:
    """The price of one unit (one token, one request): exact, since every table price is a
    whole number of 10⁻¹² per unit (the pricing loader enforces it)."""
    return unit_price if per == 1 else (unit_price / per).normalize()


@dataclass(frozen=True, slots=True)
class Totals:
    subtotal: Decimal
    credits_applied: Decimal
    amount_due: Decimal


def round_amount(amount: Decimal, currency: str) -> Decimal:
    """Half-up to the currency's minor unit: 0.005 → 0.01, 0.0049 → 0.00, -0.005 → -0.01."""
    return amount.quantize(minor_unit(currency), rounding=ROUND_HALF_UP)


def build_lines(aggregates: list[UsageAggregate], period: Period, currency: str) -> list[Line]:
    """The invoice's lines: this period's usage first, then usage of earlier months that
    arrived after they were invoiced, oldest month first, each labelled with its month."""

    def order(a: UsageAggregate) -> tuple[int, date, str, int, Decimal]:
        late = 0 if a.service_month == period.month else 1
        return (late, a.service_month, a.model or "", _KIND_ORDER.get(a.kind, 99), a.unit_price)

    return [
        Line(
            description=describe(a, period, currency),
            model=a.model,
            kind=a.kind,
            service_month=a.service_month,
            quantity=a.quantity,
            unit_price=a.unit_price,
            per=a.per,
            amount_exact=a.amount_exact,
            amount=round_amount(a.amount_exact, currency),
        )
        for a in sorted(aggregates, key=order)
    ]


def totals(lines: list[Line]) -> Totals:
    """Usage is paid from prepaid credit when it happens (SPEC 7), so the whole subtotal is
    covered by credit and nothing is due."""
    subtotal = sum((line.amount for line in lines), Decimal(0))
    return Totals(subtotal=subtotal, credits_applied=subtotal, amount_due=subtotal - subtotal)


def describe(a: UsageAggregate, period: Period, currency: str) -> str:
    label = KIND_LABELS.get(a.kind, a.kind.replace("_", " "))
    if a.kind == "search_requests" and a.model:
        suffix = next((s for s in SEARCH_SUFFIXES if a.model.endswith(s)), None)
        if suffix:
            label += f" ({suffix})"
    text = f"{a.model}: {label}" if a.model else label.capitalize()
    if a.kind != "usage":
        text += f" at {format_rate(a.unit_price, a.per, a.kind, currency)}"
    if a.service_month != period.month:
        text += f" (usage from {a.service_month.strftime('%B %Y')})"
    return text


def format_rate(unit_price: Decimal, per: int, kind: str, currency: str) -> str:
    unit = _UNITS.get(kind, "units")
    price = format_money(unit_price, currency)
    if per == 1:
        return f"{price} per {unit}"
    if per == 60 and unit == "minute":
        return f"{price} per minute"
    if per == 1_000_000:
        return f"{price} per 1M {unit}"
    return f"{price} per {per:,} {unit}"


def format_money(amount: Decimal, currency: str) -> str:
    """`€12.34`, `$0.80`, `£1.00`, else `12.34 CHF`; exact (never fewer than 2 decimals)."""
    symbol = {"EUR": "€", "USD": "$", "GBP": "£"}.get(currency.upper())
    text = money_str(amount)
    if symbol is None:
        return f"{text} {currency.upper()}"
    return f"-{symbol}{text[1:]}" if text.startswith("-") else f"{symbol}{text}"
