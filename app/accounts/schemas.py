"""Key and account settings as the admin API, the CLI and the dashboard give them (SPEC 3.6, 5).

A field left out of a `PATCH` is `UNSET` and keeps its value; `null` clears it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

import msgspec
from msgspec import UNSET, UnsetType

from app.accounts.keys import KeyScope
from app.credits.limits import InvalidLimit, SpendLimit, parse_spend_limit
from app.errors import InvalidRequest, ModelNotFound
from app.pricing.catalog import Catalog
from app.usage.windows import parse_rfc3339

# Stored text: JSON allows NUL ("\u0000"), Postgres text does not, so it is a 400 here rather
# than a database error.
Text = Annotated[str, msgspec.Meta(pattern=r"^[^\x00]*$")]
KEY_NAME_MAX = 100
MAX_ALLOWED_MODELS = 1000


class KeyFields(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[Text, msgspec.Meta(max_length=KEY_NAME_MAX)] | UnsetType | None = UNSET
    scope: str | UnsetType = UNSET
    spend_limit: dict[str, Any] | UnsetType | None = UNSET
    allowed_models: (
        Annotated[list[str], msgspec.Meta(max_length=MAX_ALLOWED_MODELS)] | UnsetType | None
    ) = UNSET
    expires_at: str | UnsetType | None = UNSET


class AccountFields(msgspec.Struct, forbid_unknown_fields=True):
    name: Text | UnsetType = UNSET
    email: Text | UnsetType | None = UNSET
    user_spend_limit: dict[str, Any] | UnsetType | None = UNSET
    low_balance_threshold: str | int | UnsetType | None = UNSET


@dataclass(frozen=True, slots=True)
class KeyChanges:
    """Validated `KeyFields`: what to set, UNSET for what to keep."""

    name: str | UnsetType | None = UNSET
    scope: KeyScope | UnsetType = UNSET
    spend_limit: SpendLimit | UnsetType | None = UNSET
    allowed_models: tuple[str, ...] | UnsetType | None = UNSET
    expires_at: datetime | UnsetType | None = UNSET


def key_changes(fields: KeyFields, catalog: Catalog, now: datetime) -> KeyChanges:
    scope: KeyScope | UnsetType = UNSET
    if fields.scope is not UNSET:
        if fields.scope not in set(KeyScope):
            raise InvalidRequest(
                f"scope must be one of {', '.join(KeyScope)}", param="scope", code="invalid_value"
            )
        scope = KeyScope(fields.scope)
    spend_limit: SpendLimit | UnsetType | None = UNSET
    if fields.spend_limit is not UNSET:
        spend_limit = _limit(fields.spend_limit, "spend_limit")
    models: tuple[str, ...] | UnsetType | None = UNSET
    if fields.allowed_models is not UNSET:
        names = fields.allowed_models
        models = None if names is None else _models(names, catalog, now)
    expires: datetime | UnsetType | None = UNSET
    if fields.expires_at is not UNSET:
        expires = None if fields.expires_at is None else _instant(fields.expires_at, "expires_at")
    name = fields.name
    if isinstance(name, str):
        name = " ".join(name.split()) or None
    return KeyChanges(name, scope, spend_limit, models, expires)


def user_spend_limit(value: dict[str, Any] | None) -> SpendLimit | None:
    return _limit(value, "user_spend_limit")


def _limit(value: object, field: str) -> SpendLimit | None:
    try:
        return parse_spend_limit(value, field=field)
    except InvalidLimit as exc:
        raise InvalidRequest(str(exc), param=exc.param, code="invalid_value") from exc


def _models(names: list[str], catalog: Catalog, now: datetime) -> tuple[str, ...]:
    """Canonical catalog names, in the order given, without repeats."""
    canonical: list[str] = []
    for name in names:
        try:
            resolved = catalog.resolve(name, now)
        except ModelNotFound:
            raise InvalidRequest(
                f"allowed_models: {name!r} is not a model in the rate tables",
                param="allowed_models",
                code="model_not_found",
            ) from None
        if resolved.name not in canonical:
            canonical.append(resolved.name)
    return tuple(canonical)


def _instant(value: str, field: str) -> datetime:
    try:
        return parse_rfc3339(value)
    except (ValueError, OverflowError):
        raise InvalidRequest(
            f"{field} must be an RFC 3339 time such as 2027-01-01T00:00:00Z",
            param=field,
            code="invalid_value",
        ) from None
