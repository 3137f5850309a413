"""Loading and validating the rate tables (`pricing/*.toml`) at start-up: `load_catalog`.

A bad table stops the start with a `PricingConfigError` that names the file, the key (a dotted
path such as `models.llama-3.1-8b.input`) and what is wrong: a billing product must not guess
what a price file meant. Unknown keys are errors, so a typo never silently drops a price.

Numbers are parsed as `Decimal` (`parse_float=Decimal`), so no float ever exists on the money
path; decimal strings (`"0.80"`) are accepted too.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import tomllib
from collections.abc import Iterable, Mapping
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from itertools import pairwise
from pathlib import Path
from typing import Any

from app.pricing.catalog import Catalog, ImageGenerationPrices, ModelPrices, PriceVersion
from app.pricing.rates import PER_MINUTE, to_pico

# Every price has at most 6 decimal places in its table unit, so every cost is exact at 12
# decimal places: tokens × (per-million price / 10⁶), requests × (per-1,000 fee / 10³), …
MAX_DECIMAL_PLACES = 6

KNOWN_CURRENCIES = frozenset(
    {"EUR", "USD", "GBP", "CHF", "JPY", "CAD", "AUD", "NZD", "SEK", "NOK", "DKK", "PLN", "CZK"}
)

# Files in the pricing directory that are not rate tables.
NOT_RATE_TABLES = frozenset({"tiers.toml"})

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]*\Z")
_SUFFIX = re.compile(r"-[a-z0-9]+(-[a-z0-9]+)*\Z")
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}\Z")

_TOP_KEYS = ("currency", "effective_from", "suffixes", "aliases", "models")
_PRICE_KEYS = (
    "input",
    "output",
    "cached_input",
    "image",
    "embedding",
    "image_generation",
    "transcription_per_minute",
    "speech_per_million_characters",
)
_MODEL_KEYS = ("owned_by", "context_length", "image_tokens", *_PRICE_KEYS)
_IMAGE_GENERATION_KEYS = ("default_size", "default_quality", "prices")


class PricingConfigError(ValueError):
    """A rate table is invalid; the message says which file, which key and why."""


class _Problem(Exception):
    """What is wrong at a key of the file being parsed; the loader adds the file name."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")


def load_catalog(directory: Path) -> Catalog:
    """Every rate table in `directory` (all `*.toml` but `tiers.toml`), validated."""
    if not directory.is_dir():
        raise PricingConfigError(f"{directory}: not a directory of rate tables")
    paths = sorted(
        path
        for path in directory.glob("*.toml")
        if path.name not in NOT_RATE_TABLES and not path.name.startswith(".")
    )
    if not paths:
        raise PricingConfigError(f"{directory}: no rate tables (*.toml besides tiers.toml)")
    versions = [load_version(path) for path in paths]
    check_versions(versions)
    return Catalog(versions)


def load_version(path: Path) -> PriceVersion:
    """One rate table file → one validated price version."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"), parse_float=Decimal)
    except OSError as exc:
        raise PricingConfigError(f"{path}: cannot read: {exc}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise PricingConfigError(f"{path}: not valid TOML: {exc}") from exc
    try:
        return _parse_version(raw, source=str(path))
    except _Problem as problem:
        raise PricingConfigError(f"{path}: {problem}") from None


def check_versions(versions: Iterable[PriceVersion]) -> None:
    """Rules across files: one currency, and one version per effective date."""
    ordered = sorted(versions, key=lambda v: v.effective_from)
    first = ordered[0]
    for previous, version in pairwise(ordered):
        if version.effective_from == previous.effective_from:
            raise PricingConfigError(
                f"{version.source}: effective_from: {version.effective_from} is also the "
                f"effective_from of {previous.source}; a price change needs a later date"
            )
    for version in ordered:
        if version.currency != first.currency:
            raise PricingConfigError(
                f"{version.source}: currency: {version.currency} differs from "
                f"{first.currency} in {first.source}; all versions must use one currency"
            )


def _parse_version(raw: Mapping[str, Any], *, source: str) -> PriceVersion:
    """A parsed TOML document → a price version; raises `_Problem` naming the key."""
    _check_keys(raw, _TOP_KEYS, "")
    currency = _currency(raw.get("currency"))
    effective_from = _date(raw.get("effective_from"), "effective_from")
    suffixes = _suffixes(raw.get("suffixes", {}))
    names: dict[str, str] = {}  # lowercase spelling → the key that declared it
    models: list[ModelPrices] = []
    for name, spec in _table(raw.get("models"), "models", required=True).items():
        key = f"models.{name}"
        _check_name(name, key, suffixes, names)
        names[name.lower()] = key
        models.append(_model(name, spec, key))
    if not models:
        raise _Problem("models", "no models; a rate table prices at least one model")
    canonical = {m.name.lower(): m.name for m in models}
    aliases = _aliases(_table(raw.get("aliases", {}), "aliases"), canonical, suffixes, names)
    models = [
        dataclasses.replace(m, aliases=tuple(a for a, t in aliases.items() if t == m.name))
        for m in models
    ]
    return PriceVersion(
        effective_from=effective_from,
        currency=currency,
        source=source,
        models=tuple(models),
        suffixes=suffixes,
        aliases=aliases,
    )


def _model(name: str, raw: object, key: str) -> ModelPrices:
    spec = _table(raw, key, required=True)
    _check_keys(spec, _MODEL_KEYS, key)

    def price(field: str) -> Decimal | None:
        value = spec.get(field)
        return None if value is None else _price(value, f"{key}.{field}")

    prices = ModelPrices(
        name=name,
        owned_by=_string(spec.get("owned_by"), f"{key}.owned_by"),
        context_length=_positive_int(spec.get("context_length"), f"{key}.context_length"),
        input=price("input"),
        output=price("output"),
        cached_input=price("cached_input"),
        image=price("image"),
        image_tokens=_positive_int(spec.get("image_tokens"), f"{key}.image_tokens"),
        embedding=price("embedding"),
        image_generation=_image_generation(spec.get("image_generation"), key),
        transcription_per_minute=_per_minute(spec.get("transcription_per_minute"), key),
        speech_per_million_characters=price("speech_per_million_characters"),
    )
    if (prices.input is None) != (prices.output is None):
        missing = "output" if prices.output is None else "input"
        raise _Problem(f"{key}.{missing}", "missing; input and output are priced together")
    for chat_only in ("cached_input", "image", "image_tokens"):
        if spec.get(chat_only) is not None and not prices.is_chat:
            raise _Problem(f"{key}.{chat_only}", "needs the model's input and output prices")
    if not any(spec.get(field) is not None for field in _PRICE_KEYS):
        raise _Problem(key, f"no prices; give at least one of {', '.join(_PRICE_KEYS)}")
    return prices


def _image_generation(raw: object, model_key: str) -> ImageGenerationPrices | None:
    if raw is None:
        return None
    key = f"{model_key}.image_generation"
    spec = _table(raw, key, required=True)
    _check_keys(spec, _IMAGE_GENERATION_KEYS, key)
    per_image: dict[str, dict[str, Decimal]] = {}
    for size, by_quality in _table(spec.get("prices"), f"{key}.prices", required=True).items():
        size_key = f"{key}.prices.{size}"
        per_image[size] = {
            quality: _price(value, f"{size_key}.{quality}")
            for quality, value in _table(by_quality, size_key, required=True).items()
        }
        if not per_image[size]:
            raise _Problem(size_key, "no qualities priced")
    if not per_image:
        raise _Problem(f"{key}.prices", "no sizes priced")
    default_size = _string(spec.get("default_size"), f"{key}.default_size")
    default_quality = _string(spec.get("default_quality"), f"{key}.default_quality")
    if default_quality not in per_image.get(default_size, {}):
        raise _Problem(
            f"{key}.default_quality",
            f"size {default_size} with quality {default_quality} has no price",
        )
    return ImageGenerationPrices(default_size, default_quality, per_image)


def _per_minute(raw: object, model_key: str) -> Decimal | None:
    """Transcription is billed per second at a per-minute price: the per-second price must be
    exact at 12 decimal places, so the per-minute price is a multiple of 0.000003."""
    if raw is None:
        return None
    key = f"{model_key}.transcription_per_minute"
    value = _price(raw, key)
    try:
        to_pico(value, PER_MINUTE)
    except ValueError:
        raise _Problem(
            key,
            f"{value} per minute is not exact per second (billing is per second, exact to 12 "
            "decimal places); use a multiple of 0.000003",
        ) from None
    return value


def _suffixes(raw: object) -> dict[str, Decimal]:
    fees: dict[str, Decimal] = {}
    for suffix, fee in _table(raw, "suffixes").items():
        key = f"suffixes.{suffix}"
        if not _SUFFIX.match(suffix):
            raise _Problem(key, "a suffix is lower case and starts with a dash, like `-online`")
        fees[suffix] = _price(fee, key)
    # A suffix ending in another (`-deep`, `-very-deep`) would make a name like `x-very-deep`
    # ambiguous between `x` and `x-very`.
    for suffix in fees:
        for other in fees:
            if suffix != other and suffix.endswith(other):
                raise _Problem(f"suffixes.{suffix}", f"ends with another suffix, {other}")
    return fees


def _aliases(
    raw: Mapping[str, Any],
    canonical: Mapping[str, str],
    suffixes: Mapping[str, Decimal],
    names: dict[str, str],
) -> dict[str, str]:
    """alias → canonical model name; an alias may point to a model or to another alias."""
    targets: dict[str, str] = {}  # lowercase alias → lowercase target
    written: dict[str, str] = {}  # lowercase alias → alias as written
    for alias, target in raw.items():
        key = f"aliases.{alias}"
        _check_name(alias, key, suffixes, names)
        names[alias.lower()] = key
        targets[alias.lower()] = _string(target, key).lower()
        written[alias.lower()] = alias
    resolved: dict[str, str] = {}
    for alias in targets:
        chain = [alias]
        while chain[-1] in targets:
            step = targets[chain[-1]]
            if step in chain:
                cycle = " → ".join(written[a] for a in [*chain[chain.index(step) :], step])
                raise _Problem(f"aliases.{written[alias]}", f"alias cycle: {cycle}")
            chain.append(step)
        if chain[-1] not in canonical:
            dangling = written[chain[-2]]
            raise _Problem(
                f"aliases.{dangling}",
                f"points to `{raw[dangling]}`, which is neither a model nor an alias in this file",
            )
        resolved[written[alias]] = canonical[chain[-1]]
    return resolved


def _check_name(
    name: str, key: str, suffixes: Mapping[str, Decimal], names: Mapping[str, str]
) -> None:
    if not _NAME.match(name):
        raise _Problem(key, "a model name is letters, digits and . _ : / @ + - without spaces")
    lowered = name.lower()
    if lowered in names:
        raise _Problem(
            key,
            f"duplicate model name: {names[lowered]} already uses it (names are matched "
            "case-insensitively, aliases included)",
        )
    for suffix in suffixes:
        if lowered.endswith(suffix):
            raise _Problem(
                key, f"ends in the suffix {suffix}, so requests for it would be ambiguous"
            )


# Scalars.


def _table(raw: object, key: str, *, required: bool = False) -> dict[str, Any]:
    if raw is None and not required:
        return {}
    if raw is None:
        raise _Problem(key, "missing")
    if not isinstance(raw, dict):
        raise _Problem(key, f"must be a table, not {_describe(raw)}")
    return raw


def _check_keys(table: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
    for name in table:
        if name not in allowed:
            close = difflib.get_close_matches(name, allowed, n=1)
            hint = f"did you mean `{close[0]}`?" if close else f"expected {', '.join(allowed)}"
            raise _Problem(f"{where}.{name}" if where else name, f"unknown key; {hint}")


def _price(raw: object, key: str) -> Decimal:
    value = _decimal(raw, key)
    if value < 0:
        raise _Problem(key, f"must not be negative (got {raw})")
    if _decimal_places(value) > MAX_DECIMAL_PLACES:
        raise _Problem(
            key,
            f"{raw} has more than {MAX_DECIMAL_PLACES} decimal places; prices are limited to "
            f"{MAX_DECIMAL_PLACES} so every cost is exact at 12 decimal places",
        )
    return value


def _decimal(raw: object, key: str) -> Decimal:
    if isinstance(raw, bool) or not isinstance(raw, int | Decimal | str):
        raise _Problem(key, f"must be a number like 0.80, not {_describe(raw)}")
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise _Problem(key, f"{raw!r} is not a decimal number") from None
    if not value.is_finite():
        raise _Problem(key, f"must be a finite number, not {raw}")
    return value


def _decimal_places(value: Decimal) -> int:
    """Significant decimal places: `0.80` has 1, `0.000001` has 6, `100` has 0."""
    _, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)  # finite, checked by the caller
    places = -exponent
    for digit in reversed(digits):  # trailing zeros are not places: 0.80 is exact at 1
        if digit or places <= 0:
            break
        places -= 1
    return max(places, 0)


def _date(raw: object, key: str) -> date:
    if raw is None:
        raise _Problem(key, "missing; give the date the prices start, e.g. 2025-01-01")
    if isinstance(raw, datetime):
        raise _Problem(key, "must be a date without a time; prices change at UTC midnight")
    if isinstance(raw, date):
        return raw
    if isinstance(raw, str) and _ISO_DATE.match(raw):
        try:
            return date.fromisoformat(raw)
        except ValueError:
            raise _Problem(key, f"{raw!r} is not a valid date") from None
    raise _Problem(key, f"must be a date like 2025-01-01, not {_describe(raw)}")


def _currency(raw: object) -> str:
    if raw is None:
        raise _Problem("currency", "missing; give an ISO 4217 code such as EUR")
    if not isinstance(raw, str) or raw not in KNOWN_CURRENCIES:
        raise _Problem(
            "currency",
            f"unknown currency {raw!r}; expected one of {', '.join(sorted(KNOWN_CURRENCIES))}",
        )
    return str(raw)


def _string(raw: object, key: str) -> str:
    if raw is None:
        raise _Problem(key, "missing")
    if not isinstance(raw, str) or not raw.strip():
        raise _Problem(key, f"must be a non-empty string, not {_describe(raw)}")
    return raw


def _positive_int(raw: object, key: str) -> int | None:
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int) or raw <= 0:
        raise _Problem(key, f"must be a positive whole number, not {_describe(raw)}")
    return raw


def _describe(raw: object) -> str:
    return f"{type(raw).__name__} {raw!r}" if not isinstance(raw, dict) else "a table"
