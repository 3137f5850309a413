"""Properties of the money arithmetic, checked against an independent exact reference
(fractions) over many generated usages."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.errors import ModelNotFound
from app.pricing import Catalog, Charge, Usage, load_catalog, price
from tests.pricing.conftest import FIXTURE_DIR, write_tables

AT = datetime(2025, 5, 7, tzinfo=UTC)
FIXTURE = load_catalog(FIXTURE_DIR)
CHAT_NAMES = [r.name for r in FIXTURE.resolutions_at(AT) if r.prices.is_chat]
TWELVE_PLACES = Decimal("1e-12")

counts = st.integers(min_value=0, max_value=10**12)
small_counts = st.integers(min_value=0, max_value=1_000)


@st.composite
def chat_usages(draw: st.DrawFn) -> Usage:
    prompt = draw(counts)
    return Usage(
        prompt_tokens=prompt,
        cached_tokens=draw(st.integers(min_value=0, max_value=prompt)),
        completion_tokens=draw(counts),
        images_in=draw(small_counts),
        requests=draw(st.integers(min_value=0, max_value=3)),
    )


def reference_total(charge: Charge) -> Fraction:
    return sum(
        (Fraction(item.quantity) * Fraction(item.unit_price) / item.per for item in charge.lines),
        Fraction(0),
    )


def split(usage: Usage, data: st.DataObject) -> tuple[Usage, Usage]:
    """Two usages whose counts add up to `usage`'s, cached tokens within each prompt."""
    prompt = data.draw(st.integers(0, usage.prompt_tokens))
    low = max(0, usage.cached_tokens - (usage.prompt_tokens - prompt))
    cached = data.draw(st.integers(low, min(prompt, usage.cached_tokens)))
    completion = data.draw(st.integers(0, usage.completion_tokens))
    images = data.draw(st.integers(0, usage.images_in))
    requests = data.draw(st.integers(0, usage.requests))
    first = Usage(
        prompt_tokens=prompt,
        cached_tokens=cached,
        completion_tokens=completion,
        images_in=images,
        requests=requests,
    )
    second = Usage(
        prompt_tokens=usage.prompt_tokens - prompt,
        cached_tokens=usage.cached_tokens - cached,
        completion_tokens=usage.completion_tokens - completion,
        images_in=usage.images_in - images,
        requests=usage.requests - requests,
    )
    return first, second


@given(model=st.sampled_from(CHAT_NAMES), usage=chat_usages(), data=st.data())
def test_cost_is_additive_over_splits(model: str, usage: Usage, data: st.DataObject) -> None:
    resolved = FIXTURE.resolve(model, AT)
    first, second = split(usage, data)
    assert (
        price(resolved, usage).total == price(resolved, first).total + price(resolved, second).total
    )


@given(model=st.sampled_from(CHAT_NAMES), usage=chat_usages())
def test_cost_is_exact_non_negative_and_the_sum_of_its_lines(model: str, usage: Usage) -> None:
    charge = price(FIXTURE.resolve(model, AT), usage)
    assert charge.total >= 0
    assert all(item.quantity > 0 and item.amount >= 0 for item in charge.lines)
    assert charge.total == sum((item.amount for item in charge.lines), Decimal(0))
    assert Fraction(charge.total) == reference_total(charge)
    # Exact at 12 decimal places, as the money columns store it.
    assert charge.total == charge.total.quantize(TWELVE_PLACES)
    for item in charge.lines:
        assert Fraction(item.amount) == Fraction(item.quantity) * Fraction(item.unit_price) / (
            item.per
        )


@given(
    records=st.lists(st.tuples(st.sampled_from(CHAT_NAMES), chat_usages()), max_size=20),
    data=st.data(),
)
def test_cost_does_not_depend_on_the_order_of_records(
    records: list[tuple[str, Usage]], data: st.DataObject
) -> None:
    def total(items: list[tuple[str, Usage]]) -> Decimal:
        return sum(
            (price(FIXTURE.resolve(model, AT), usage).total for model, usage in items),
            Decimal(0),
        )

    shuffled = data.draw(st.permutations(records))
    assert total(records) == total(shuffled)
    reference = sum(
        (reference_total(price(FIXTURE.resolve(m, AT), u)) for m, u in records), Fraction(0)
    )
    assert Fraction(total(records)) == reference


# A price change: a second version from 2025-07-01 changes llama-3.1-8b, drops deepseek.
V1 = (FIXTURE_DIR / "test-2025-01-01.toml").read_text()
V2 = (
    V1.replace("effective_from = 2025-01-01", "effective_from = 2025-07-01")
    .replace("input = 0.20\noutput = 0.20", "input = 0.25\noutput = 0.30")
    .replace('"-online" = 6.00', '"-online" = 7.00')
)
V2 = V2[: V2.index('[models."deepseek-r1-70b"]')] + V2[V2.index('[models."pixtral-12b-2409"]') :]
CHANGE = datetime(2025, 7, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def before_and_after(tmp_path_factory: pytest.TempPathFactory) -> tuple[Catalog, Catalog]:
    root: Path = tmp_path_factory.mktemp("pricing")
    only_v1 = load_catalog(write_tables(root / "v1", v1=V1))
    both = load_catalog(write_tables(root / "both", v1=V1, v2=V2))
    return only_v1, both


def test_the_price_change_fixture_really_changes_prices(
    before_and_after: tuple[Catalog, Catalog],
) -> None:
    _, both = before_and_after
    usage = Usage(prompt_tokens=1_000_000, completion_tokens=1_000_000)
    assert price(both.resolve("llama-3.1-8b", CHANGE), usage).total == Decimal("0.55")
    assert price(both.resolve("llama-3.1-8b-online", CHANGE), usage).total == Decimal("0.557")
    with pytest.raises(ModelNotFound):
        both.resolve("deepseek-r1-70b", CHANGE)


@given(
    model=st.sampled_from(CHAT_NAMES),
    usage=chat_usages(),
    seconds=st.integers(0, int((CHANGE - datetime(2025, 1, 1, tzinfo=UTC)).total_seconds()) - 1),
)
def test_a_later_price_change_never_changes_earlier_costs(
    before_and_after: tuple[Catalog, Catalog], model: str, usage: Usage, seconds: int
) -> None:
    only_v1, both = before_and_after
    at = datetime(2025, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds)
    old = price(only_v1.resolve(model, at), usage)
    new = price(both.resolve(model, at), usage)
    assert new == old
    assert new.price_version.isoformat() == "2025-01-01"
