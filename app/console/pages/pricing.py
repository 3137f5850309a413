"""The price catalog as loaded: every version with its effective date and whether it is past,
in force or scheduled; per version each model's prices and the suffix fees."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from litestar import Request, Response, get
from litestar.di import NamedDependency

from app.console.render import page
from app.console.schemas import Permission
from app.console.session import Staff
from app.money import money_str
from app.pricing import Catalog
from app.pricing.catalog import ModelPrices, PriceVersion


@dataclass(frozen=True, slots=True)
class VersionView:
    version: PriceVersion
    state: str  # "past", "in force" or "scheduled"
    until: datetime | None  # when the next version starts
    aliases: dict[str, list[str]]  # model → its other spellings
    priced_names: int  # names that resolve in it (suffixed variants included, aliases not)


def other_prices(prices: ModelPrices) -> list[str]:
    """Prices outside the chat columns, each as it reads: `embedding 0.02 / 1M tokens`."""
    parts: list[str] = []
    if prices.embedding is not None:
        parts.append(f"embedding {money_str(prices.embedding)} / 1M tokens")
    if prices.image_generation is not None:
        parts.extend(
            f"image {size} {quality} {money_str(price)} each"
            for size, by_quality in prices.image_generation.per_image.items()
            for quality, price in by_quality.items()
        )
    if prices.transcription_per_minute is not None:
        parts.append(f"transcription {money_str(prices.transcription_per_minute)} / minute")
    if prices.speech_per_million_characters is not None:
        parts.append(f"speech {money_str(prices.speech_per_million_characters)} / 1M characters")
    return parts


def version_views(catalog: Catalog, now: datetime) -> list[VersionView]:
    """Newest first."""
    current = catalog.version_at(now)
    views: list[VersionView] = []
    for index, version in enumerate(catalog.versions):
        following = catalog.versions[index + 1] if index + 1 < len(catalog.versions) else None
        if version is current:
            state = "in force"
        elif version.starts_at > now:
            state = "scheduled"
        else:
            state = "past"
        aliases: dict[str, list[str]] = {m.name: list(m.aliases) for m in version.models}
        for alias, target in version.aliases.items():
            if alias not in aliases.setdefault(target, []):
                aliases[target].append(alias)
        views.append(
            VersionView(
                version,
                state,
                following.starts_at if following else None,
                aliases,
                len(catalog.resolutions_at(version.starts_at)),
            )
        )
    return views[::-1]


@get("/pricing")
async def pricing_page(
    request: Request[Any, Any, Any],
    staff: NamedDependency[Staff],
    catalog: NamedDependency[Catalog],
) -> Response[str]:
    staff.require(Permission.READ)
    return page(
        request,
        "console_pricing.html",
        staff=staff,
        nav="pricing",
        currency=catalog.currency,
        versions=version_views(catalog, datetime.now(UTC)),
        other_prices=other_prices,
        plain_or_dash=lambda value: "—" if value is None else money_str(value),
    )
