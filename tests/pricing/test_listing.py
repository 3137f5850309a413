"""Money formatting and the views printed by `tollgate pricing check`."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from app.pricing import Catalog, catalog_as_json, format_money, render_catalog_table


@pytest.mark.parametrize(
    ("amount", "text"),
    [
        (Decimal("6.016E-3"), "0.006016"),
        (Decimal("0.0060160"), "0.006016"),
        (Decimal("1.6"), "1.60"),
        (Decimal("1.60000000"), "1.60"),
        (Decimal("2E+3"), "2000.00"),
        (Decimal("1E-12"), "0.000000000001"),
        (Decimal("0"), "0.00"),
    ],
)
def test_format_money_never_uses_exponent_notation(amount: Decimal, text: str) -> None:
    assert format_money(amount) == text


def test_table_lists_every_model_and_the_suffix_fees(shipped: Catalog) -> None:
    table = render_catalog_table(shipped)
    lines = table.splitlines()
    assert lines[0].endswith("camocopy-2025-01-01.toml: prices in EUR from 2025-01-01")
    assert lines[1].split() == [
        "model", "aliases", "input/1M", "output/1M", "cached/1M", "image", "context",
        "effective_from", "other",
    ]  # fmt: skip
    assert lines[2].split() == [
        "llama-3.3-70b", "llama-3-3-70b", "0.80", "0.80", "-", "-", "131072", "2025-01-01",
    ]  # fmt: skip
    assert lines[5].split() == [
        "pixtral-12b-2409", "0.35", "0.35", "-", "0.001", "131072", "2025-01-01",
    ]  # fmt: skip
    assert lines[-1] == "suffix fees per 1,000 requests: -online 6.00, -deep 12.00"
    # Aligned: every column starts at the same offset on every row.
    assert len({line.index("2025-01-01") for line in lines[2:6]}) == 1


def test_table_shows_non_chat_prices(fixture_catalog: Catalog) -> None:
    table = render_catalog_table(fixture_catalog)
    assert "embedding 0.02/1M" in table
    assert "1792x1024 hd 0.12/image" in table
    assert "transcription 0.006/min" in table
    assert "speech 15.00/1M chars" in table


def test_json_view_has_every_version_with_money_as_strings(shipped: Catalog) -> None:
    view = catalog_as_json(shipped)
    json.dumps(view)  # JSON-able as it is
    assert view["currency"] == "EUR"
    (version,) = view["versions"]
    assert version["effective_from"] == "2025-01-01"
    assert version["suffixes"] == {
        "-online": {"per_1000_requests": "6.00"},
        "-deep": {"per_1000_requests": "12.00"},
    }
    assert version["models"][0] == {
        "id": "llama-3.3-70b",
        "aliases": ["llama-3-3-70b"],
        "owned_by": "meta",
        "context_length": 131072,
        "pricing": {"input": "0.80", "output": "0.80"},
    }
