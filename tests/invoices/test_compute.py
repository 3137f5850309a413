"""Invoice arithmetic as pure functions: the rounding rule, numbering, periods, wording."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.invoices.compute import (
    UsageAggregate,
    build_lines,
    format_money,
    invoice_number,
    parse_period,
    per_unit,
    previous_period,
    round_amount,
    totals,
)
from app.payments.currency import from_minor, to_minor

JUNE = parse_period("2026-06")


def aggregate(amount: str, kind: str = "input_tokens", model: str = "m") -> UsageAggregate:
    return UsageAggregate(
        service_month=JUNE.month,
        model=model,
        kind=kind,
        unit_price=Decimal(amount),
        per=1,
        quantity=1,
        amount_exact=Decimal(amount),
    )


@pytest.mark.parametrize(
    ("exact", "rounded"),
    [
        ("0.005", "0.01"),  # half-up, not half-even
        ("0.015", "0.02"),
        ("1.225", "1.23"),
        ("0.0049999999", "0.00"),
        ("2.344999999999", "2.34"),
        ("0.000000000001", "0.00"),
        ("-0.005", "-0.01"),
    ],
)
def test_line_amounts_round_half_up_to_cents(exact: str, rounded: str) -> None:
    assert round_amount(Decimal(exact), "EUR") == Decimal(rounded)


def test_subtotal_is_the_sum_of_rounded_lines_not_the_rounded_sum() -> None:
    lines = build_lines(
        [
            aggregate("0.004", "input_tokens"),
            aggregate("0.004", "output_tokens"),
            aggregate("0.004", "images"),
        ],
        JUNE,
        "EUR",
    )
    assert [line.amount for line in lines] == [Decimal("0.00")] * 3
    assert sum(line.amount_exact for line in lines) == Decimal("0.012")  # kept unrounded
    assert totals(lines).subtotal == Decimal("0.00")  # not round(0.012) = 0.01

    lines = build_lines(
        [aggregate("0.005", "input_tokens"), aggregate("0.005", "output_tokens")], JUNE, "EUR"
    )
    assert totals(lines).subtotal == Decimal("0.02")  # not round(0.010) = 0.01


@given(st.lists(st.integers(min_value=0, max_value=10**15), min_size=1, max_size=20))
def test_subtotal_always_equals_the_printed_lines(picos: list[int]) -> None:
    aggregates = [
        UsageAggregate(
            JUNE.month, f"m{i}", "input_tokens", Decimal(1), 1, 1, Decimal(p).scaleb(-12)
        )
        for i, p in enumerate(picos)
    ]
    lines = build_lines(aggregates, JUNE, "EUR")
    total = totals(lines)
    assert total.subtotal == sum(line.amount for line in lines)
    assert total.amount_due == total.subtotal - total.credits_applied == 0
    for line in lines:
        assert abs(line.amount - line.amount_exact) <= Decimal("0.005")
        assert line.amount == line.amount.quantize(Decimal("0.01"))


def test_zero_decimal_currency_rounds_to_whole_units() -> None:
    assert round_amount(Decimal("12.5"), "JPY") == Decimal("13")
    assert round_amount(Decimal("1.0005"), "KWD") == Decimal("1.001")


def test_minor_units_convert_exactly_both_ways() -> None:
    assert from_minor(2000, "eur") == Decimal("20.00")
    assert from_minor(2000, "JPY") == Decimal("2000")
    assert from_minor(1234, "KWD") == Decimal("1.234")
    assert to_minor(Decimal("20.00"), "EUR") == 2000
    assert to_minor(Decimal("5"), "EUR") == 500
    assert to_minor(Decimal("2000"), "jpy") == 2000
    with pytest.raises(ValueError, match="decimals"):
        to_minor(Decimal("20.001"), "EUR")
    with pytest.raises(ValueError, match="decimals"):
        to_minor(Decimal("1.5"), "JPY")


def test_numbers_periods_and_wording() -> None:
    assert invoice_number(2026, 42) == "INV-2026-000042"
    assert (JUNE.start, JUNE.end) == (
        datetime(2026, 6, 1, tzinfo=UTC),
        datetime(2026, 7, 1, tzinfo=UTC),
    )
    assert parse_period("2026-12").end == datetime(2027, 1, 1, tzinfo=UTC)
    for bad in ("2026-00", "2026-13", "26-01", "2026-1", ""):
        with pytest.raises(ValueError, match="YYYY-MM"):
            parse_period(bad)
    assert previous_period(datetime(2027, 1, 3, 9, tzinfo=UTC)).label == "2026-12"
    assert per_unit(Decimal("0.80"), 1_000_000) == Decimal("0.0000008")
    assert per_unit(Decimal("6.00"), 1_000) == Decimal("0.006")
    assert format_money(Decimal("12.3"), "EUR") == "€12.30"
    assert format_money(Decimal("-1"), "EUR") == "-€1.00"
    assert format_money(Decimal("0.125"), "CHF") == "0.125 CHF"

    late = UsageAggregate(
        date(2026, 5, 1),
        "llama-3.3-70b-deep",
        "search_requests",
        Decimal("12.00"),
        1000,
        2,
        Decimal("0.024"),
    )
    [line] = build_lines([late], JUNE, "EUR")
    assert line.description == (
        "llama-3.3-70b-deep: web search requests (-deep) at €12.00 per 1,000 requests "
        "(usage from May 2026)"
    )
