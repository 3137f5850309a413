"""Money and charges as JSON: money is always a decimal string in plain notation, never a float
and never exponent notation (`"0.006016"`, not `"6.016E-3"`)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date
from decimal import Decimal
from functools import lru_cache
from typing import Any

import msgspec

from app.money import money_str
from app.pricing.charge import Charge
from app.pricing.rates import PICO, Rate

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


def format_money(amount: Decimal) -> str:
    """Exact, plain notation, trailing zeros dropped but at least two decimals: `0.006016`,
    `1.60`, `0.80`. The same text as everywhere else in the API (`app.money`)."""
    return money_str(amount)


def charge_json(charge: Charge) -> bytes:
    """The itemised charge as stored with a usage event (the prices it was charged with), as
    JSON: `{"model", "currency", "price_version", "total", "lines": [{"kind", "quantity",
    "unit_price", "per", "amount"}]}`. Built from per-rate fragments and integer pico amounts:
    ingestion prices thousands of events per request, and formatting Decimals would dominate
    its time."""
    lines = []
    total = 0
    for rate, quantity in charge.items:
        amount = rate.pico_per_unit * quantity
        total += amount
        head, tail = _line_fragments(rate)
        lines.append(f'{head}{quantity}{tail}{_pico_money(amount)}"}}')
    head = _charge_head(charge.model, charge.currency, charge.price_version)
    return f'{head}"total":"{_pico_money(total)}","lines":[{",".join(lines)}]}}'.encode()


def charge_to_json(charge: Charge) -> dict[str, Any]:
    """`charge_json` as a JSON object."""
    document: dict[str, Any] = _decode(charge_json(charge))
    return document


# A receipt's `cost_details` (OpenRouter's names): each charge line's kind under its detail.
_DETAILS = {
    "input_tokens": "input",
    "embedding_tokens": "input",
    "cached_input_tokens": "cached_input",
    "output_tokens": "output",
    "search_requests": "search",
    "images": "images",
}


def receipt(charge: Charge) -> dict[str, Any]:
    """A response's receipt (SPEC 3.1): `cost`, `currency`, `price_version` and `cost_details`,
    decimal strings whose details sum exactly to the cost (all in integer 10⁻¹² units)."""
    details = _details(
        (rate.kind, rate.pico_per_unit * quantity) for rate, quantity in charge.items
    )
    return {
        "cost": _pico_money(sum(details.values())),
        "currency": charge.currency,
        "price_version": charge.price_version.isoformat(),
        "cost_details": {key: _pico_money(pico) for key, pico in details.items()},
    }


def stored_cost_details(charge: Any) -> dict[str, str]:
    """`cost_details` of a charge as a usage event stores it (`charge_json`)."""
    lines = charge.get("lines") if isinstance(charge, dict) else None
    amounts = (
        (str(line["kind"]), int(Decimal(line["amount"]) * PICO))
        for line in (lines if isinstance(lines, list) else ())
    )
    return {key: _pico_money(pico) for key, pico in _details(amounts).items()}


def _details(amounts: Iterable[tuple[str, int]]) -> dict[str, int]:
    details = dict.fromkeys(("input", "cached_input", "output", "search", "images"), 0)
    for kind, pico in amounts:
        key = _DETAILS.get(kind, kind)
        details[key] = details.get(key, 0) + pico
    return details


@lru_cache(maxsize=1024)
def _charge_head(model: str, currency: str, version: date) -> str:
    return (
        f'{{"model":{_encode(model).decode()},"currency":{_encode(currency).decode()},'
        f'"price_version":"{version.isoformat()}",'
    )


@lru_cache(maxsize=1024)
def _line_fragments(rate: Rate) -> tuple[str, str]:
    return (
        f'{{"kind":{_encode(rate.kind).decode()},"quantity":',
        f',"unit_price":"{money_str(rate.price)}","per":{rate.per},"amount":"',
    )


def _pico_money(pico: int) -> str:
    """`money_str` of a non-negative amount in 10⁻¹²: plain, trailing zeros dropped, at least
    two decimals."""
    whole, fraction = divmod(pico, PICO)
    digits = f"{fraction:012d}".rstrip("0")
    return f"{whole}.{digits.ljust(2, '0')}"
