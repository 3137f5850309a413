"""The dashboard's pure parts: how money reads, and the chart's geometry."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.dashboard.chart import TICKS, daily_chart, nice_step
from app.dashboard.format import money
from app.dashboard.service import parse_month


@pytest.mark.parametrize(
    ("amount", "currency", "shown"),
    [
        ("12.34", "EUR", "€12.34"),
        ("12.345", "EUR", "€12.35"),
        ("0", "EUR", "€0.00"),
        ("0.01", "EUR", "€0.01"),
        ("0.0064632", "EUR", "€0.0065"),
        ("0.000000123", "EUR", "€0.00000012"),
        ("10000", "EUR", "€10,000.00"),
        ("-1.5", "EUR", "-€1.50"),
        ("20.00", "USD", "$20.00"),
        ("3", "CHF", "CHF 3.00"),
        # The most a balance holds, numeric(38, 12): past the default context's 28 digits.
        ("9" * 26 + ".994999999999", "EUR", "€" + f"{10**26 - 1:,}" + ".99"),
        ("-" + "9" * 26 + ".995", "EUR", "-€" + f"{10**26:,}" + ".00"),
        ("1" + "0" * 25 + ".005", "EUR", "€" + f"{10**25:,}" + ".01"),
    ],
)
def test_money(amount: str, currency: str, shown: str) -> None:
    assert money(Decimal(amount), currency) == shown


@given(st.decimals(min_value=0, max_value=10**9, places=9, allow_nan=False))
def test_money_always_has_a_dot_and_two_decimals(amount: Decimal) -> None:
    text = money(amount, "EUR").removeprefix("€").replace(",", "")
    whole, dot, fraction = text.partition(".")
    assert dot and len(fraction) >= 2 and whole.isdigit()
    if amount > 0:
        assert Decimal(text) > 0  # never €0.00 for something that cost something


@pytest.mark.parametrize(
    ("largest", "step"),
    [("0", "0.25"), ("1", "0.25"), ("0.34", "0.1"), ("3.78", "1"), ("0.0003", "0.0001")],
)
def test_nice_step(largest: str, step: str) -> None:
    assert nice_step(Decimal(largest)) == Decimal(step)


@given(st.decimals(min_value=Decimal("1e-9"), max_value=10**7, places=9, allow_nan=False))
def test_the_axis_always_reaches_the_largest_bar(largest: Decimal) -> None:
    step = nice_step(largest)
    assert step * TICKS >= largest
    assert step * TICKS < largest * 4 + Decimal("1e-9")  # and not absurdly far beyond


def test_one_bar_per_day_and_zero_height_on_idle_days() -> None:
    today = date(2026, 5, 31)
    days = [(today - timedelta(days=29 - i), Decimal(0)) for i in range(30)]
    days[-1] = (today, Decimal("2.00"))
    days[10] = (days[10][0], Decimal("0.50"))
    chart = daily_chart(days, "EUR", today)
    assert len(chart.bars) == 30
    assert [b.day for b in chart.bars] == [d for d, _ in days]
    assert [b.height > 0 for b in chart.bars].count(True) == 2
    tallest = chart.bars[-1]
    assert tallest.today and tallest.title == "2026-05-31: €2.00"
    assert tallest.y + tallest.height == chart.baseline
    assert chart.bars[10].height == pytest.approx(tallest.height / 4, abs=0.02)
    assert [t.label for t in chart.y_ticks] == ["€0.00", "€0.50", "€1.00", "€1.50", "€2.00"]
    assert chart.x_labels[-1].text == "31 May"
    assert chart.total == Decimal("2.50")
    assert not daily_chart(days, "EUR", today).empty
    assert daily_chart([(d, Decimal(0)) for d, _ in days], "EUR", today).empty


def test_parse_month() -> None:
    today = date(2026, 5, 17)
    assert parse_month(None, today) == date(2026, 5, 1)
    assert parse_month("2025-12", today) == date(2025, 12, 1)
    for bad in ("2025-13", "2025-1", "May", "0001-01", "2025-12-01"):
        with pytest.raises(ValueError):
            parse_month(bad, today)
