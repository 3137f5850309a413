"""Money as text: decimal strings in plain notation, never floats (SPEC: general rules)."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

# What the ledger stores exactly: numeric(38, 12) (app/db/base.py). More places would be
# rounded by Postgres, a larger amount refused by it.
LEDGER_PLACES = 12
LEDGER_LIMIT = Decimal(10) ** (38 - LEDGER_PLACES)


def money_str(amount: Decimal) -> str:
    """Exact plain-notation string without trailing zeros beyond two places: `0.006016`,
    `1.60`, `20.00`, never `6.016E-3`."""
    if amount == amount.to_integral_value():
        return f"{amount.quantize(Decimal('0.01')):f}"
    text = f"{amount.normalize():f}"
    if len(text.partition(".")[2]) < 2:
        text = f"{amount.quantize(Decimal('0.01')):f}"
    return text


def parse_money(value: object, *, field: str) -> Decimal:
    """A decimal string (or integer) from a request body; floats are refused so no binary
    rounding ever reaches the ledger."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f'{field} must be a decimal string such as "10.00"')
    try:
        amount = Decimal(value)
    except InvalidOperation as exc:
        raise ValueError(f'{field} must be a decimal string such as "10.00"') from exc
    if not amount.is_finite():
        raise ValueError(f"{field} must be a finite decimal")
    return amount


def ledger_amount_problem(amount: Decimal) -> str | None:
    """Why a finite `amount` cannot be stored exactly in the ledger, or None."""
    if abs(amount) >= LEDGER_LIMIT:
        return f"must be less than {LEDGER_LIMIT:f}"
    _, digits, exponent = amount.as_tuple()
    beyond = -LEDGER_PLACES - int(exponent)  # digits past the last stored place
    if beyond > 0 and any(digits[-beyond:]):
        return f"has more than {LEDGER_PLACES} decimal places"
    return None
