"""Money as text (app/money.py): printing never raises and is exact; parsing takes only plain
decimals the ledger's columns hold exactly."""

from __future__ import annotations

import re
from decimal import MAX_EMAX, MAX_PREC, MIN_EMIN, Context, Decimal

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from app.money import LEDGER_LIMIT, LEDGER_PLACES, money_str, parse_money

PLAIN = re.compile(r"-?(0|[1-9][0-9]*)\.[0-9]{2,}")

# Decimals of any length and scale, well past the default context's 28 digits, plus
# hypothesis' own (which favour edge cases such as -0 and tiny exponents).
long_decimals = st.builds(
    lambda sign, digits, exponent: Decimal((sign, tuple(digits), exponent)),
    st.integers(0, 1),
    st.lists(st.integers(0, 9), min_size=1, max_size=120),
    st.integers(-120, 120),
)
finite_decimals = st.decimals(allow_nan=False, allow_infinity=False) | long_decimals


@given(finite_decimals)
@example(Decimal("1e27"))
@example(Decimal("12345678901234567890123456789.5"))
@example(Decimal("-0"))
@example(Decimal("-0.000"))
@example(Decimal("1E-40"))
@example(Decimal(10) ** 30 + Decimal("0.000000000001"))
def test_money_str_is_plain_exact_and_never_raises(amount: Decimal) -> None:
    text = money_str(amount)
    assert PLAIN.fullmatch(text), text
    assert Decimal(text) == amount
    fraction = text.partition(".")[2]
    assert len(fraction) == 2 or not fraction.endswith("0"), text  # no zeros beyond two places
    if amount == 0:
        assert text == "0.00"  # never "-0.00"


@pytest.mark.parametrize(
    ("amount", "expected"),
    [
        ("0.006016", "0.006016"),
        ("1.6", "1.60"),
        ("20", "20.00"),
        ("20.000", "20.00"),
        ("0.10", "0.10"),
        ("6.016E-3", "0.006016"),
        ("-5.5", "-5.50"),
    ],
)
def test_money_str_examples(amount: str, expected: str) -> None:
    assert money_str(Decimal(amount)) == expected


@given(long_decimals)
def test_parse_money_accepts_exactly_what_the_ledger_holds(amount: Decimal) -> None:
    wide = Context(prec=MAX_PREC, Emax=MAX_EMAX, Emin=MIN_EMIN)
    stored = amount.quantize(Decimal(1).scaleb(-LEDGER_PLACES), context=wide)
    fits = abs(amount) < LEDGER_LIMIT and stored == amount
    written = f"{amount:f}"
    if fits:
        assert parse_money(written, field="amount") == amount
    else:
        with pytest.raises(ValueError, match="amount"):
            parse_money(written, field="amount")


@pytest.mark.parametrize(
    "value",
    [
        "1e27",
        "1E+2",
        "1e-20",
        "NaN",
        "-NaN",
        "sNaN",
        "Infinity",
        "-Infinity",
        "inf",
        "1_000",
        "١٢",  # Arabic-Indic digits, which Decimal() reads as 12
        "",
        ".",
        "1.2.3",
        "0x10",
        "1" + "0" * 26,
        "-" + "9" * 27,
        "0.0000000000001",
        "1e999999999999999999",
        10**26,
        -(10**40),
        1.5,
        True,
        None,
        ["1"],
    ],
)
def test_parse_money_refuses(value: object) -> None:
    with pytest.raises(ValueError, match=r"^amount "):
        parse_money(value, field="amount")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("20.00", Decimal("20.00")),
        (" 20 ", Decimal("20")),
        ("+5", Decimal("5")),
        (".5", Decimal("0.5")),
        ("5.", Decimal("5")),
        ("-1", Decimal("-1")),
        ("0.000000000001", Decimal("1E-12")),
        ("9" * 26 + "." + "9" * 12, Decimal("9" * 26 + "." + "9" * 12)),
        ("1.000000000000000000", Decimal(1)),  # zeros past the 12th place lose nothing
        (42, Decimal(42)),
    ],
)
def test_parse_money_accepts(value: object, expected: Decimal) -> None:
    assert parse_money(value, field="amount") == expected
