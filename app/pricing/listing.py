"""Views of the catalog for people and programs: OpenAI model objects for `GET /v1/models`,
and the table and JSON that `tollgate pricing check` prints. Money is always a string."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from app.pricing.catalog import (
    Catalog,
    ImageGenerationPrices,
    ModelPrices,
    PriceVersion,
    ResolvedModel,
)
from app.pricing.serialize import format_money


def _money(amount: Decimal | None) -> str | None:
    return None if amount is None else format_money(amount)


def _image_generation(table: ImageGenerationPrices) -> dict[str, Any]:
    return {
        "default_size": table.default_size,
        "default_quality": table.default_quality,
        "prices": {
            size: {quality: format_money(p) for quality, p in by_quality.items()}
            for size, by_quality in table.per_image.items()
        },
    }


def model_prices(prices: ModelPrices) -> dict[str, Any]:
    """The model's prices in table units (per 1M tokens, per image, …); unpriced kinds left
    out."""
    generation = prices.image_generation
    view: dict[str, Any] = {
        "input": _money(prices.input),
        "output": _money(prices.output),
        "cached_input": _money(prices.cached_input),
        "image": _money(prices.image),
        "embedding": _money(prices.embedding),
        "image_generation": _image_generation(generation) if generation else None,
        "transcription_per_minute": _money(prices.transcription_per_minute),
        "speech_per_million_characters": _money(prices.speech_per_million_characters),
    }
    return {kind: value for kind, value in view.items() if value is not None}


def model_object(resolved: ResolvedModel, created: datetime) -> dict[str, Any]:
    """OpenAI's model object plus `context_length` and `pricing` (OpenRouter's habit): token
    prices per million, `request` per request for a suffixed variant."""
    pricing: dict[str, Any] = {"currency": resolved.currency, **model_prices(resolved.prices)}
    if resolved.rates.search is not None:
        pricing["request"] = format_money(resolved.rates.search.amount(1))
    return {
        "id": resolved.name,
        "object": "model",
        "created": int(created.timestamp()),
        "owned_by": resolved.prices.owned_by,
        "context_length": resolved.prices.context_length,
        "pricing": pricing,
    }


def models_list(catalog: Catalog, at: datetime) -> dict[str, Any]:
    """`GET /v1/models`: every priced name in force at `at`, suffixed variants included."""
    version = catalog.version_at(at)
    if version is None:
        return {"object": "list", "data": []}
    return {
        "object": "list",
        "data": [model_object(r, version.starts_at) for r in catalog.resolutions_at(at)],
    }


def model_detail(catalog: Catalog, model_id: str, at: datetime) -> dict[str, Any]:
    """`GET /v1/models/{id}`: matched like a request (any case, aliases, suffixes)."""
    resolved = catalog.resolve(model_id, at)
    version = catalog.version_at(at)
    assert version is not None  # resolve succeeded, so a version is in force
    return model_object(resolved, version.starts_at)


# `tollgate pricing check`


def _version_json(version: PriceVersion) -> dict[str, Any]:
    return {
        "effective_from": version.effective_from.isoformat(),
        "currency": version.currency,
        "source": version.source,
        "suffixes": {
            suffix: {"per_1000_requests": format_money(fee)}
            for suffix, fee in version.suffixes.items()
        },
        "models": [
            {
                "id": m.name,
                "aliases": list(m.aliases),
                "owned_by": m.owned_by,
                "context_length": m.context_length,
                "pricing": model_prices(m),
            }
            for m in version.models
        ],
    }


def catalog_as_json(catalog: Catalog) -> dict[str, Any]:
    """Every version, oldest first, for `tollgate pricing check --json`."""
    return {
        "currency": catalog.currency,
        "versions": [_version_json(v) for v in catalog.versions],
    }


def _other_prices(prices: ModelPrices) -> str:
    """Prices outside the chat columns, compactly: `embedding 0.02/1M`."""
    parts: list[str] = []
    if prices.embedding is not None:
        parts.append(f"embedding {format_money(prices.embedding)}/1M")
    if prices.image_generation is not None:
        parts.extend(
            f"{size} {quality} {format_money(p)}/image"
            for size, by_quality in prices.image_generation.per_image.items()
            for quality, p in by_quality.items()
        )
    if prices.transcription_per_minute is not None:
        parts.append(f"transcription {format_money(prices.transcription_per_minute)}/min")
    if prices.speech_per_million_characters is not None:
        parts.append(f"speech {format_money(prices.speech_per_million_characters)}/1M chars")
    return ", ".join(parts)


_COLUMNS = (
    "model",
    "aliases",
    "input/1M",
    "output/1M",
    "cached/1M",
    "image",
    "context",
    "effective_from",
    "other",
)
_NUMERIC = frozenset({"input/1M", "output/1M", "cached/1M", "image", "context"})


def _rows(version: PriceVersion) -> list[tuple[str, ...]]:
    return [
        (
            m.name,
            ", ".join(m.aliases),
            _money(m.input) or "-",
            _money(m.output) or "-",
            _money(m.cached_input) or "-",
            _money(m.image) or "-",
            str(m.context_length or "-"),
            version.effective_from.isoformat(),
            _other_prices(m),
        )
        for m in version.models
    ]


def _aligned(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    return [
        "  ".join(
            cell.rjust(width) if column in _NUMERIC else cell.ljust(width)
            for cell, width, column in zip(row, widths, _COLUMNS, strict=True)
        ).rstrip()
        for row in rows
    ]


def render_catalog_table(catalog: Catalog) -> str:
    """A plain-text table per version, oldest first, each followed by its suffix fees."""
    blocks: list[str] = []
    for version in catalog.versions:
        lines = [f"{version.source}: prices in {version.currency} from {version.effective_from}"]
        lines.extend(_aligned([_COLUMNS, *_rows(version)]))
        if version.suffixes:
            fees = ", ".join(f"{s} {format_money(f)}" for s, f in version.suffixes.items())
            lines.append(f"suffix fees per 1,000 requests: {fees}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"
