"""The price catalog in memory: versions of rate tables and the resolution of a requested model
name to the rates in force at a given time.

A version is a complete snapshot of the prices from its `effective_from` (UTC midnight) until
the next version starts, so a price change never rewrites the cost of an earlier record, and a
model absent from the version in force at a time is unknown at that time.

Resolution is one `str.lower()`, one bisect and one dict lookup: every spelling a client may
use (canonical name, alias, each with or without a suffix) is precomputed per version.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from decimal import Decimal

from app.errors import ModelNotFound
from app.pricing.rates import PER_MILLION, PER_MINUTE, PER_THOUSAND, PER_UNIT, Rates, rate


@dataclass(frozen=True, slots=True)
class ImageGenerationPrices:
    """Price per generated image by size then quality, and what a request that names neither
    is charged as."""

    default_size: str
    default_quality: str
    per_image: Mapping[str, Mapping[str, Decimal]]  # size → quality → price per image


# Prompt tokens an input image counts for in a credit hold, unless the model sets its own
# (`image_tokens`): OpenAI's largest published per-image charge is gpt-4.1-mini's 1,536
# patches × 1.62 = 2,489 tokens.
DEFAULT_IMAGE_TOKENS = 2_560


@dataclass(frozen=True, slots=True)
class ModelPrices:
    """One model's rates in one version. Token prices are per 1,000,000 tokens; a price that
    is None means the model is not priced (so not served) for that kind of usage."""

    name: str
    owned_by: str
    context_length: int | None = None
    aliases: tuple[str, ...] = ()
    input: Decimal | None = None
    output: Decimal | None = None
    cached_input: Decimal | None = None
    image: Decimal | None = None  # per input image
    image_tokens: int | None = None  # prompt tokens an input image may cost, for holds
    embedding: Decimal | None = None
    image_generation: ImageGenerationPrices | None = None
    transcription_per_minute: Decimal | None = None
    speech_per_million_characters: Decimal | None = None

    @property
    def is_chat(self) -> bool:
        """Priced for chat and legacy completions, and so also in its suffixed variants."""
        return self.input is not None and self.output is not None


@dataclass(frozen=True, slots=True)
class PriceVersion:
    """One rate table (one file): all prices in force from `effective_from`."""

    effective_from: date
    currency: str
    source: str  # the file it was loaded from, for messages
    models: tuple[ModelPrices, ...]
    suffixes: Mapping[str, Decimal] = field(default_factory=dict)  # "-online" → per 1,000 requests
    aliases: Mapping[str, str] = field(default_factory=dict)  # alias → canonical model name

    @property
    def starts_at(self) -> datetime:
        return datetime.combine(self.effective_from, time(), UTC)


@dataclass(frozen=True, slots=True)
class ResolvedModel:
    """A requested model name resolved against the version in force at a time."""

    name: str  # canonical catalog name as requested, suffix included: "llama-3.3-70b-online"
    base: str  # canonical name of the priced model: "llama-3.3-70b"
    suffix: str | None  # "-online", "-deep" or None
    prices: ModelPrices
    suffix_fee: Decimal | None  # per 1,000 requests, when suffixed
    version: date  # effective_from of the version that priced it
    currency: str
    rates: Rates  # the same prices per unit, ready for `price()`


def resolution(
    name: str, prices: ModelPrices, suffix: str | None, version: PriceVersion
) -> ResolvedModel:
    fee = version.suffixes[suffix] if suffix is not None else None
    rates = Rates(
        input=rate("input_tokens", prices.input, PER_MILLION),
        cached_input=rate("cached_input_tokens", prices.cached_input, PER_MILLION),
        output=rate("output_tokens", prices.output, PER_MILLION),
        image=rate("images", prices.image, PER_UNIT),
        embedding=rate("embedding_tokens", prices.embedding, PER_MILLION),
        transcription=rate("audio_seconds", prices.transcription_per_minute, PER_MINUTE),
        speech=rate("speech_characters", prices.speech_per_million_characters, PER_MILLION),
        search=rate("search_requests", fee, PER_THOUSAND),
    )
    return ResolvedModel(
        name + (suffix or ""),
        name,
        suffix,
        prices,
        fee,
        version.effective_from,
        version.currency,
        rates,
    )


def model_not_found(model: str, detail: str = "does not exist or is not priced") -> ModelNotFound:
    return ModelNotFound(f"The model `{model}` {detail}.", param="model")


def lookup_table(version: PriceVersion) -> dict[str, ResolvedModel]:
    """Every lowercase spelling that resolves in `version` → its resolution.

    Suffixed variants exist only for chat models: a web search on an embedding or image model
    means nothing, so `test-embed-online` is unknown.
    """
    spellings: dict[str, str] = {m.name.lower(): m.name for m in version.models}
    spellings.update({alias.lower(): target for alias, target in version.aliases.items()})
    by_name = {m.name: m for m in version.models}
    table: dict[str, ResolvedModel] = {}
    for spelling, canonical in spellings.items():
        prices = by_name[canonical]
        table[spelling] = resolution(canonical, prices, None, version)
        if prices.is_chat:
            for suffix in version.suffixes:
                table[spelling + suffix] = resolution(canonical, prices, suffix, version)
    return table


class Catalog:
    """All price versions, oldest first. The loader validates them; this class only indexes."""

    __slots__ = ("_lookups", "_starts", "currency", "versions")

    def __init__(self, versions: Sequence[PriceVersion]) -> None:
        if not versions:
            raise ValueError("a catalog needs at least one price version")
        self.versions: tuple[PriceVersion, ...] = tuple(
            sorted(versions, key=lambda v: v.effective_from)
        )
        self.currency: str = self.versions[0].currency
        self._starts: list[datetime] = [v.starts_at for v in self.versions]
        self._lookups: list[dict[str, ResolvedModel]] = [lookup_table(v) for v in self.versions]

    def _index_at(self, at: datetime) -> int:
        if at.tzinfo is None:
            # A naive time would silently be read in the server's zone: refuse it.
            raise ValueError("resolution time must be timezone-aware")
        return bisect_right(self._starts, at) - 1

    def version_at(self, at: datetime) -> PriceVersion | None:
        """The version in force at `at`, None before the first one."""
        index = self._index_at(at)
        return self.versions[index] if index >= 0 else None

    def resolve(self, model: str, at: datetime) -> ResolvedModel:
        """The rates for `model` (any case, alias, optional suffix) in force at `at`.

        Raises `ModelNotFound` when no version is in force yet or the version in force does not
        price the name (a suffixed name whose base is not priced included).
        """
        index = self._index_at(at)
        resolved = self._lookups[index].get(model.lower()) if index >= 0 else None
        if resolved is None:
            raise model_not_found(model)
        return resolved

    def resolutions_at(self, at: datetime) -> list[ResolvedModel]:
        """Every priced name in force at `at` (base models, then their suffixed variants, in
        file order), for listings."""
        index = self._index_at(at)
        if index < 0:
            return []
        version = self.versions[index]
        lookup = self._lookups[index]
        listed: list[ResolvedModel] = []
        for prices in version.models:
            listed.append(lookup[prices.name.lower()])
            if prices.is_chat:
                listed.extend(lookup[(prices.name + s).lower()] for s in version.suffixes)
        return listed
