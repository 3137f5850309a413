"""Resolving a requested name: case, aliases, suffixes, and time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from app.errors import ModelNotFound
from app.pricing import Catalog

AT = datetime(2025, 5, 7, tzinfo=UTC)


@pytest.mark.parametrize("requested", ["llama-3.3-70b", "LLAMA-3.3-70B", "Llama-3.3-70b"])
def test_names_match_case_insensitively(shipped: Catalog, requested: str) -> None:
    resolved = shipped.resolve(requested, AT)
    assert (resolved.name, resolved.base, resolved.suffix) == (
        "llama-3.3-70b",
        "llama-3.3-70b",
        None,
    )
    assert resolved.suffix_fee is None


def test_aliases_resolve_to_the_canonical_name(shipped: Catalog) -> None:
    assert shipped.resolve("llama-3-3-70b", AT).name == "llama-3.3-70b"
    assert shipped.resolve("LLAMA-3-1-8B", AT).name == "llama-3.1-8b"


def test_suffixed_names_carry_the_suffix_and_its_fee(shipped: Catalog) -> None:
    resolved = shipped.resolve("LLAMA-3-3-70B-Online", AT)
    assert resolved.name == "llama-3.3-70b-online"
    assert resolved.base == "llama-3.3-70b"
    assert resolved.suffix == "-online"
    assert resolved.suffix_fee == Decimal("6.00")
    assert resolved.prices.input == Decimal("0.80")
    assert (resolved.version.isoformat(), resolved.currency) == ("2025-01-01", "EUR")
    deep = shipped.resolve("pixtral-12b-2409-DEEP", AT)
    assert (deep.name, deep.suffix_fee) == ("pixtral-12b-2409-deep", Decimal("12.00"))


@pytest.mark.parametrize(
    "requested",
    [
        "gpt-4o",
        "gpt-4o-online",
        "llama-3.3-70b-online-deep",
        "llama-3.3-70b-offline",
        "-online",
        "",
    ],
)
def test_unpriced_names_are_unknown(shipped: Catalog, requested: str) -> None:
    with pytest.raises(ModelNotFound) as caught:
        shipped.resolve(requested, AT)
    error = caught.value
    assert error.message == f"The model `{requested}` does not exist or is not priced."
    assert (error.param, error.code, error.status_code) == ("model", "model_not_found", 404)


def test_suffixes_apply_only_to_chat_models(fixture_catalog: Catalog) -> None:
    assert fixture_catalog.resolve("test-embed", AT).name == "test-embed"
    with pytest.raises(ModelNotFound):
        fixture_catalog.resolve("test-embed-online", AT)


def test_before_the_first_version_every_model_is_unknown(shipped: Catalog) -> None:
    first = datetime(2025, 1, 1, tzinfo=UTC)
    assert shipped.resolve("llama-3.1-8b", first).name == "llama-3.1-8b"
    with pytest.raises(ModelNotFound):
        shipped.resolve("llama-3.1-8b", first - timedelta(microseconds=1))
    assert shipped.version_at(first - timedelta(seconds=1)) is None


def test_versions_start_at_utc_midnight_whatever_the_zone_of_the_time(shipped: Catalog) -> None:
    paris = datetime(2025, 1, 1, 0, 30, tzinfo=ZoneInfo("Europe/Paris"))  # 23:30 UTC on Dec 31
    with pytest.raises(ModelNotFound):
        shipped.resolve("llama-3.1-8b", paris)
    new_york = datetime(2024, 12, 31, 19, 0, tzinfo=ZoneInfo("America/New_York"))  # 00:00 UTC
    assert shipped.resolve("llama-3.1-8b", new_york).name == "llama-3.1-8b"


def test_naive_times_are_refused(shipped: Catalog) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        shipped.resolve("llama-3.1-8b", datetime(2025, 5, 7))
