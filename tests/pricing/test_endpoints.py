"""Each endpoint prices its own kind of usage, with the test-fixture models; a model without a
price for the endpoint is not served there."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from app.errors import InvalidRequest, ModelNotFound
from app.pricing import Catalog, Endpoint, Usage, price

AT = datetime(2025, 5, 7, tzinfo=UTC)


def lines(catalog: Catalog, model: str, usage: Usage) -> list[tuple[str, int, Decimal]]:
    charge = price(catalog.resolve(model, AT), usage)
    assert charge.total == sum(item.amount for item in charge.lines)
    return [(item.kind, item.quantity, item.amount) for item in charge.lines]


def test_cached_prompt_tokens_are_billed_at_the_cached_price(fixture_catalog: Catalog) -> None:
    usage = Usage(prompt_tokens=1_000_000, cached_tokens=400_000, completion_tokens=10)
    assert lines(fixture_catalog, "test-cached", usage) == [
        ("input_tokens", 600_000, Decimal("0.6")),
        ("cached_input_tokens", 400_000, Decimal("0.2")),
        ("output_tokens", 10, Decimal("0.00002")),
    ]


def test_cached_tokens_cost_the_input_price_without_a_cached_price(
    fixture_catalog: Catalog,
) -> None:
    usage = Usage(prompt_tokens=1_000_000, cached_tokens=400_000)
    assert lines(fixture_catalog, "llama-3.1-8b", usage) == [
        ("input_tokens", 1_000_000, Decimal("0.2"))
    ]


def test_legacy_completions_price_like_chat(fixture_catalog: Catalog) -> None:
    usage = Usage(Endpoint.COMPLETIONS, prompt_tokens=6_000_000, completion_tokens=2_000_000)
    assert price(fixture_catalog.resolve("llama-3.1-8b", AT), usage).total == Decimal("1.60")


def test_embeddings(fixture_catalog: Catalog) -> None:
    usage = Usage("/v1/embeddings", prompt_tokens=1_234)
    assert lines(fixture_catalog, "test-embed", usage) == [
        ("embedding_tokens", 1_234, Decimal("0.00002468"))
    ]


def test_image_generation_by_size_and_quality(fixture_catalog: Catalog) -> None:
    def cost(size: str | None, quality: str | None) -> Decimal:
        usage = Usage(
            Endpoint.IMAGE_GENERATIONS, images_out=2, image_size=size, image_quality=quality
        )
        return price(fixture_catalog.resolve("test-image", AT), usage).total

    assert cost(None, None) == Decimal("0.08")  # defaults: 1024x1024 standard
    assert cost("1024x1024", "hd") == Decimal("0.16")
    assert cost("1792x1024", None) == Decimal("0.16")
    assert cost("1792x1024", "hd") == Decimal("0.24")


def test_unpriced_image_size_or_quality_is_refused(fixture_catalog: Catalog) -> None:
    resolved = fixture_catalog.resolve("test-image", AT)
    with pytest.raises(InvalidRequest) as caught:
        price(resolved, Usage(Endpoint.IMAGE_GENERATIONS, images_out=1, image_size="256x256"))
    assert caught.value.param == "size"
    assert "priced sizes: 1024x1024, 1792x1024" in caught.value.message
    with pytest.raises(InvalidRequest) as caught:
        price(resolved, Usage(Endpoint.IMAGE_GENERATIONS, images_out=1, image_quality="ultra"))
    assert caught.value.param == "quality"


def test_transcription_is_billed_per_second_at_a_per_minute_price(
    fixture_catalog: Catalog,
) -> None:
    usage = Usage(Endpoint.TRANSCRIPTIONS, audio_seconds=61)
    charge = price(fixture_catalog.resolve("test-whisper", AT), usage)
    assert charge.lines == (("audio_seconds", 61, Decimal("0.006"), 60, Decimal("0.0061")),)


def test_speech_is_billed_per_character(fixture_catalog: Catalog) -> None:
    usage = Usage(Endpoint.SPEECH, characters=1_000)
    assert lines(fixture_catalog, "test-tts", usage) == [
        ("speech_characters", 1_000, Decimal("0.015"))
    ]


@pytest.mark.parametrize(
    ("model", "endpoint"),
    [
        ("test-embed", Endpoint.CHAT),
        ("llama-3.1-8b", Endpoint.EMBEDDINGS),
        ("llama-3.1-8b", Endpoint.IMAGE_GENERATIONS),
        ("test-tts", Endpoint.TRANSCRIPTIONS),
        ("test-whisper", Endpoint.SPEECH),
        ("llama-3.3-70b-online", Endpoint.SPEECH),
    ],
)
def test_a_model_without_a_price_for_the_endpoint_is_not_served(
    fixture_catalog: Catalog, model: str, endpoint: Endpoint
) -> None:
    resolved = fixture_catalog.resolve(model, AT)
    with pytest.raises(ModelNotFound) as caught:
        price(resolved, Usage(endpoint))
    assert caught.value.message == f"The model `{resolved.name}` is not priced for {endpoint}."


def test_an_ingested_suffixed_event_without_a_search_pays_no_fee(shipped: Catalog) -> None:
    charge = price(shipped.resolve("llama-3.1-8b-online", AT), Usage(prompt_tokens=1, requests=0))
    assert [item.kind for item in charge.lines] == ["input_tokens"]


@pytest.mark.parametrize(
    "bad",
    [
        {"prompt_tokens": -1},
        {"prompt_tokens": 1, "cached_tokens": 2},
        {"endpoint": "/v1/moderations"},
    ],
)
def test_impossible_usage_is_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Usage(**bad)  # type: ignore[arg-type]
