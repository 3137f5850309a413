"""Exact per-unit rates in integer pico-units (10⁻¹²), precomputed once per resolved model.

Every table price has at most 6 decimal places in its unit (the loader enforces it), so a
per-unit price (per-million price / 10⁶, per-1,000 fee / 10³, per-minute price / 60) is a whole
number of 10⁻¹² and so is every amount: quantity × rate is integer arithmetic, exact by
construction and fast. Money becomes `Decimal` only at the edges (`to_money`), with 12 decimal
places, exactly what the money columns hold.
"""

from __future__ import annotations

from decimal import Context, Decimal, Inexact, InvalidOperation, Overflow, Rounded
from typing import NamedTuple

# For the few Decimal operations left: any rounding raises instead of passing silently.
EXACT = Context(prec=60, traps=[Inexact, Rounded, InvalidOperation, Overflow])

PICO = 10**12
PER_MILLION = 1_000_000
PER_THOUSAND = 1_000
PER_MINUTE = 60  # seconds
PER_UNIT = 1


def to_money(pico: int) -> Decimal:
    """An integer number of 10⁻¹² → Decimal with 12 decimal places."""
    return Decimal(pico).scaleb(-12, EXACT)


def to_pico(amount: Decimal, per: int) -> int:
    """`amount / per` as a whole number of 10⁻¹²; ValueError when that is not exact."""
    pico, remainder = EXACT.divmod(EXACT.multiply(amount, PICO), per)
    if remainder:
        raise ValueError(f"{amount} per {per} is not a whole number of 10⁻¹² per unit")
    return int(pico)


class Rate(NamedTuple):
    kind: str  # the charge line it produces: "input_tokens", "search_requests", …
    price: Decimal  # as written in the table, for `per` units
    per: int
    pico_per_unit: int  # price / per in 10⁻¹²

    def amount(self, quantity: int) -> Decimal:
        return to_money(quantity * self.pico_per_unit)


def rate(kind: str, price: Decimal | None, per: int) -> Rate | None:
    """None for an unpriced kind."""
    return None if price is None else Rate(kind, price, per, to_pico(price, per))


class Rates(NamedTuple):
    """A resolved model's rates by kind of usage; None where it is not priced."""

    input: Rate | None
    cached_input: Rate | None
    output: Rate | None
    image: Rate | None  # per input image
    embedding: Rate | None
    transcription: Rate | None
    speech: Rate | None
    search: Rate | None  # the suffix's fee per request
