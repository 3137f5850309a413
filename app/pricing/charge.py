"""Pricing a usage record: `price(resolved, usage) -> Charge`, a pure function.

Exact: the total is a sum of quantity × per-unit rate in integer pico-units (10⁻¹²,
`app.pricing.rates`), so nothing is ever rounded. A charge keeps its items (rate, quantity);
the itemised `lines` with Decimal amounts are built from them when asked for, which keeps the
hot path (every request's hold and settlement) free of per-line Decimal work.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from decimal import Decimal
from typing import NamedTuple

from app.errors import InvalidRequest, ModelNotFound
from app.pricing.catalog import ResolvedModel, model_not_found
from app.pricing.rates import PER_UNIT, Rate, rate, to_money
from app.pricing.usage import Endpoint, Usage

Items = list[tuple[Rate, int]]  # (rate, quantity > 0)


class ChargeLine(NamedTuple):
    """One itemised line: `amount = quantity × unit_price / per`, where `unit_price` is the
    price as written in the table and `per` its unit size (1,000,000 tokens, 1,000 requests,
    60 seconds, 1 image)."""

    kind: str
    quantity: int
    unit_price: Decimal
    per: int
    amount: Decimal


class Charge(NamedTuple):
    model: str  # canonical name as requested, suffix included
    currency: str
    price_version: date  # effective_from of the version that priced it
    total: Decimal  # exactly the sum of the line amounts, 12 decimal places
    items: tuple[tuple[Rate, int], ...]

    @property
    def lines(self) -> tuple[ChargeLine, ...]:
        """The itemised breakdown, in a fixed order (tokens, images, fees)."""
        return tuple(
            ChargeLine(rate.kind, quantity, rate.price, rate.per, rate.amount(quantity))
            for rate, quantity in self.items
        )


def _not_priced(resolved: ResolvedModel, endpoint: str) -> ModelNotFound:
    return model_not_found(resolved.name, f"is not priced for {endpoint}")


def _chat_items(resolved: ResolvedModel, usage: Usage) -> Items:
    rates = resolved.rates
    if rates.input is None or rates.output is None:
        raise _not_priced(resolved, usage.endpoint)
    items: Items = []
    fresh = usage.prompt_tokens
    if rates.cached_input is not None and usage.cached_tokens:
        fresh -= usage.cached_tokens
    if fresh:
        items.append((rates.input, fresh))
    if fresh != usage.prompt_tokens and rates.cached_input is not None:
        items.append((rates.cached_input, usage.cached_tokens))
    if usage.completion_tokens:
        items.append((rates.output, usage.completion_tokens))
    # Without a per-image price the images are billed inside the input tokens, as OpenAI does.
    if usage.images_in and rates.image is not None:
        items.append((rates.image, usage.images_in))
    return items


def _single_item(rate: Rate | None, quantity: int, resolved: ResolvedModel, usage: Usage) -> Items:
    if rate is None:
        raise _not_priced(resolved, usage.endpoint)
    return [(rate, quantity)] if quantity else []


def _embedding_items(resolved: ResolvedModel, usage: Usage) -> Items:
    return _single_item(resolved.rates.embedding, usage.prompt_tokens, resolved, usage)


def _transcription_items(resolved: ResolvedModel, usage: Usage) -> Items:
    return _single_item(resolved.rates.transcription, usage.audio_seconds, resolved, usage)


def _speech_items(resolved: ResolvedModel, usage: Usage) -> Items:
    return _single_item(resolved.rates.speech, usage.characters, resolved, usage)


def image_price(resolved: ResolvedModel, size: str | None, quality: str | None) -> Decimal:
    """The price per image a generation request is charged at (the model's defaults where the
    request names no size or quality); an unpriced size or quality is refused (400)."""
    table = resolved.prices.image_generation
    if table is None:
        raise _not_priced(resolved, Endpoint.IMAGE_GENERATIONS)
    size = size or table.default_size
    quality = quality or table.default_quality
    by_quality = table.per_image.get(size)
    if by_quality is None:
        raise InvalidRequest(
            f"Size `{size}` is not priced for model `{resolved.name}`; "
            f"priced sizes: {', '.join(table.per_image)}.",
            param="size",
        )
    price = by_quality.get(quality)
    if price is None:
        raise InvalidRequest(
            f"Quality `{quality}` is not priced for model `{resolved.name}` at size {size}; "
            f"priced qualities: {', '.join(by_quality)}.",
            param="quality",
        )
    return price


def _image_generation_items(resolved: ResolvedModel, usage: Usage) -> Items:
    price = image_price(resolved, usage.image_size, usage.image_quality)
    per_image = rate("image_generations", price, PER_UNIT)
    return _single_item(per_image, usage.images_out, resolved, usage)


_ITEMS_BY_ENDPOINT: dict[str, Callable[[ResolvedModel, Usage], Items]] = {
    Endpoint.CHAT: _chat_items,
    Endpoint.COMPLETIONS: _chat_items,
    Endpoint.EMBEDDINGS: _embedding_items,
    Endpoint.IMAGE_GENERATIONS: _image_generation_items,
    Endpoint.TRANSCRIPTIONS: _transcription_items,
    Endpoint.SPEECH: _speech_items,
}


def price(resolved: ResolvedModel, usage: Usage) -> Charge:
    """The exact, itemised charge for `usage` at the rates in `resolved`.

    What each endpoint prices:
      chat, completions  prompt tokens (cached ones at `cached_input` when the model has it),
                         completion tokens, input images (where the model has an image fee)
      embeddings         prompt tokens at `embedding`
      images             generated images at the price of their size and quality
      transcriptions     audio seconds at `transcription_per_minute`
      speech             input characters at `speech_per_million_characters`
    plus, for a suffixed model, the suffix's fee per request. Raises `ModelNotFound` when the
    model has no price for the endpoint: unpriced usage is never served.
    """
    items = _ITEMS_BY_ENDPOINT[usage.endpoint](resolved, usage)
    search = resolved.rates.search
    if search is not None and usage.requests:
        items.append((search, usage.requests))
    pico = 0
    for unit_rate, quantity in items:
        pico += unit_rate.pico_per_unit * quantity
    return Charge(resolved.name, resolved.currency, resolved.version, to_money(pico), tuple(items))
