"""Money and charges as JSON: money is always a decimal string in plain notation, never a float
and never exponent notation (`"0.006016"`, not `"6.016E-3"`)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from app.money import money_str
from app.pricing.charge import Charge, ChargeLine


def format_money(amount: Decimal) -> str:
    """Exact, plain notation, trailing zeros dropped but at least two decimals: `0.006016`,
    `1.60`, `0.80`. The same text as everywhere else in the API (`app.money`)."""
    return money_str(amount)


def charge_line_to_dict(item: ChargeLine) -> dict[str, Any]:
    return {
        "kind": item.kind,
        "quantity": item.quantity,
        "unit_price": format_money(item.unit_price),
        "per": item.per,
        "amount": format_money(item.amount),
    }


def charge_to_json(charge: Charge) -> dict[str, Any]:
    """The itemised charge as stored with a usage event: the prices it was charged with."""
    return {
        "model": charge.model,
        "currency": charge.currency,
        "price_version": charge.price_version.isoformat(),
        "total": format_money(charge.total),
        "lines": [charge_line_to_dict(item) for item in charge.lines],
    }
