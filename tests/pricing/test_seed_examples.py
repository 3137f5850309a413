"""Seed 000's worked examples, priced with the shipped table exactly."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from app.pricing import Catalog, Usage, charge_to_json, price

AT = datetime(2025, 5, 7, 14, 30, tzinfo=UTC)


def test_6m_input_and_2m_output_tokens_on_llama_3_1_8b_cost_exactly_1_60(shipped: Catalog) -> None:
    charge = price(
        shipped.resolve("llama-3.1-8b", AT),
        Usage(prompt_tokens=6_000_000, completion_tokens=2_000_000),
    )
    assert charge.total == Decimal("1.60")
    assert [(item.kind, item.amount) for item in charge.lines] == [
        ("input_tokens", Decimal("1.20")),
        ("output_tokens", Decimal("0.40")),
    ]
    assert charge.currency == "EUR"


def test_one_online_request_with_13_prompt_and_7_completion_tokens(shipped: Catalog) -> None:
    charge = price(
        shipped.resolve("llama-3.3-70b-online", AT), Usage(prompt_tokens=13, completion_tokens=7)
    )
    assert charge.total == Decimal("0.006016")
    assert charge_to_json(charge) == {
        "model": "llama-3.3-70b-online",
        "currency": "EUR",
        "price_version": "2025-01-01",
        "total": "0.006016",
        "lines": [
            {
                "kind": "input_tokens",
                "quantity": 13,
                "unit_price": "0.80",
                "per": 1_000_000,
                "amount": "0.0000104",
            },
            {
                "kind": "output_tokens",
                "quantity": 7,
                "unit_price": "0.80",
                "per": 1_000_000,
                "amount": "0.0000056",
            },
            {
                "kind": "search_requests",
                "quantity": 1,
                "unit_price": "6.00",
                "per": 1_000,
                "amount": "0.006",
            },
        ],
    }


def test_two_images_on_pixtral_add_exactly_0_002(shipped: Catalog) -> None:
    resolved = shipped.resolve("pixtral-12b-2409", AT)
    without = price(resolved, Usage(prompt_tokens=1_000, completion_tokens=500))
    with_images = price(resolved, Usage(prompt_tokens=1_000, completion_tokens=500, images_in=2))
    assert with_images.total - without.total == Decimal("0.002")
    assert with_images.lines[-1] == ("images", 2, Decimal("0.001"), 1, Decimal("0.002"))


def test_deep_suffix_fee_is_0_012_per_request(shipped: Catalog) -> None:
    charge = price(shipped.resolve("deepseek-r1-70b-deep", AT), Usage(prompt_tokens=0))
    assert charge.total == Decimal("0.012")
    assert [item.kind for item in charge.lines] == ["search_requests"]


def test_images_on_a_model_without_an_image_fee_are_billed_in_its_tokens(
    shipped: Catalog,
) -> None:
    charge = price(shipped.resolve("llama-3.3-70b", AT), Usage(prompt_tokens=10, images_in=3))
    assert [item.kind for item in charge.lines] == ["input_tokens"]


def test_zero_usage_costs_nothing_and_has_no_lines(shipped: Catalog) -> None:
    charge = price(shipped.resolve("llama-3.1-8b", AT), Usage())
    assert charge.total == 0
    assert charge.lines == ()
