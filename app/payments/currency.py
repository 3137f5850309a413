"""Stripe amounts are integers in the currency's minor unit; the ledger holds exact Decimals.

Most currencies have two decimals, a few none (JPY) or three (KWD), per Stripe's currency
table. Conversion is exact both ways; an amount finer than the minor unit is refused rather
than rounded.
"""

from __future__ import annotations

from decimal import MAX_EMAX, MAX_PREC, MIN_EMIN, Context, Decimal

# Scaling by a power of ten is exact in this context; the default one keeps 28 digits.
_EXACT = Context(prec=MAX_PREC, Emax=MAX_EMAX, Emin=MIN_EMIN)

# https://docs.stripe.com/currencies#zero-decimal and #three-decimal
ZERO_DECIMAL = frozenset(
    [
        "BIF",
        "CLP",
        "DJF",
        "GNF",
        "JPY",
        "KMF",
        "KRW",
        "MGA",
        "PYG",
        "RWF",
        "UGX",
        "VND",
        "VUV",
        "XAF",
        "XOF",
        "XPF",
    ]
)
THREE_DECIMAL = frozenset(["BHD", "JOD", "KWD", "OMR", "TND"])


def exponent(currency: str) -> int:
    code = currency.upper()
    if code in ZERO_DECIMAL:
        return 0
    if code in THREE_DECIMAL:
        return 3
    return 2


def from_minor(amount: int, currency: str) -> Decimal:
    """`2000` EUR → `Decimal("20.00")`; `2000` JPY → `Decimal("2000")`."""
    return Decimal(amount).scaleb(-exponent(currency), context=_EXACT)


def to_minor(amount: Decimal, currency: str) -> int:
    """`Decimal("20.00")` EUR → `2000`. ValueError when `amount` has more decimals than the
    currency's minor unit (20.001 EUR), so nothing is ever silently rounded."""
    scaled = amount.scaleb(exponent(currency), context=_EXACT)
    if scaled != scaled.to_integral_value():
        raise ValueError(
            f"{amount} has more decimals than {currency.upper()} allows ({exponent(currency)})"
        )
    return int(scaled)


def minor_unit(currency: str) -> Decimal:
    """The smallest amount of the currency: `0.01` for EUR, `1` for JPY."""
    return Decimal(1).scaleb(-exponent(currency))
