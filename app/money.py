"""Money as text: decimal strings in plain notation, never floats (SPEC: general rules).

Parsing and printing are exact and never raise on a number's size: neither goes through the
default decimal context, whose 28 digits would round (or refuse) larger amounts.
"""

from __future__ import annotations

import re
from decimal import Decimal

from app.db.base import MONEY

# What a money column stores exactly: the ledger, balances, holds and settings all use
# numeric(38, 12) (app/db/base.py). More places would be rounded by Postgres, a larger amount
# refused by it.
assert MONEY.precision is not None and MONEY.scale is not None
LEDGER_PLACES: int = MONEY.scale
LEDGER_LIMIT = Decimal(10) ** (MONEY.precision - MONEY.scale)

# Digits with an optional fraction: no exponent, no NaN or Infinity, no `1_000`, no digits of
# other scripts (all of which `Decimal()` would accept).
_PLAIN_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")


def money_str(amount: Decimal) -> str:
    """Exact plain-notation string without trailing zeros beyond two places: `0.006016`,
    `1.60`, `20.00`, never `6.016E-3`, for a Decimal of any size."""
    if not amount.is_finite():
        return str(amount)  # never money; printed rather than raised in an error message
    # `f` without a precision prints every digit, exactly, without the decimal context.
    whole, _, fraction = f"{amount:f}".partition(".")
    fraction = fraction.rstrip("0").ljust(2, "0")
    if whole == "-0" and fraction.strip("0") == "":
        whole = "0"  # a negative zero is zero
    return f"{whole}.{fraction}"


def parse_money(value: object, *, field: str) -> Decimal:
    """A decimal string in plain notation (or an integer) from a request body, that the
    ledger's columns hold exactly; else ValueError naming `field`. Floats are refused so no
    binary rounding ever reaches the ledger."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f'{field} must be a decimal string such as "10.00"')
    if isinstance(value, str):
        text = value.strip()
        if not _PLAIN_DECIMAL.fullmatch(text):
            raise ValueError(f'{field} must be a decimal string such as "10.00"')
        amount = Decimal(text)
    else:
        amount = Decimal(value)
    if problem := ledger_amount_problem(amount):
        raise ValueError(f"{field} {problem}")
    return amount


def ledger_amount_problem(amount: Decimal) -> str | None:
    """Why `amount` cannot be stored exactly in the ledger, or None."""
    if not amount.is_finite():
        return "must be a finite decimal"
    if amount.copy_abs() >= LEDGER_LIMIT:  # exact: no context, so no overflow
        return f"must be less than {LEDGER_LIMIT:f}"
    _, digits, exponent = amount.as_tuple()
    assert isinstance(exponent, int)
    beyond = -LEDGER_PLACES - exponent  # digits past the last stored place
    if beyond > 0 and any(digits[-beyond:]):
        return f"has more than {LEDGER_PLACES} decimal places"
    return None
