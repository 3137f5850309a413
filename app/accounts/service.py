"""Account and key operations. Never commits: the request or command that calls it does."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from msgspec import UNSET
from sqlalchemy.ext.asyncio import AsyncSession

from app.accounts import repository
from app.accounts.auth import Principal
from app.accounts.keys import KeyScope, generate_key
from app.accounts.schemas import KeyChanges
from app.credits import service as credits
from app.credits.limits import LimitPeriod, SpendLimit
from app.db.models import Account, ApiKey
from app.errors import InvalidRequest, NotFound, PermissionDenied
from app.notifications import service as notifications
from app.notifications.schemas import EventType


async def create_account(session: AsyncSession, *, name: str, email: str | None) -> Account:
    name = name.strip()
    if not name:
        raise InvalidRequest("name must not be empty", param="name")
    return await repository.insert_account(session, name=name, email=email)


async def get_account(session: AsyncSession, account_id: uuid.UUID) -> Account:
    account = await repository.get_account(session, account_id)
    if account is None:
        raise NotFound(f"No account with id {account_id}", param="account_id")
    return account


async def issue_key(
    session: AsyncSession,
    account_id: uuid.UUID,
    *,
    name: str | None = None,
    changes: KeyChanges | None = None,
    creator: Principal | None = None,
) -> tuple[ApiKey, str]:
    """Returns the stored key and its plaintext, which is never retrievable again. With a
    `creator` (a customer's key), the new key can have no more rights than it has."""
    changes = changes or KeyChanges(name=name)
    account = await credits.lock_account(session, account_id)
    if creator is not None:
        _check_rights(creator, account, changes)
    new = generate_key()
    scope = KeyScope.FULL if changes.scope is UNSET else changes.scope
    models = None if changes.allowed_models in (UNSET, None) else changes.allowed_models
    expires = None if changes.expires_at is UNSET else changes.expires_at
    key = await repository.insert_key(
        session,
        account_id=account_id,
        name=None if changes.name is UNSET else changes.name,
        key_hash=new.key_hash,
        prefix=new.prefix,
        scope=scope.value,
        allowed_models=None if models is None else list(models),
        expires_at=expires,
    )
    if changes.spend_limit not in (UNSET, None):
        await credits.set_key_limit(session, account, key.id, changes.spend_limit)
    return key, new.plaintext


async def get_key(
    session: AsyncSession, key_id: uuid.UUID, *, account_id: uuid.UUID | None = None
) -> ApiKey:
    key = await repository.get_key(session, key_id)
    if key is None or (account_id is not None and key.account_id != account_id):
        raise NotFound(f"No API key with id {key_id}", param="key_id")
    return key


async def update_key(
    session: AsyncSession,
    key_id: uuid.UUID,
    changes: KeyChanges,
    *,
    account_id: uuid.UUID | None = None,
    creator: Principal | None = None,
) -> tuple[ApiKey, Account]:
    """`PATCH /admin/keys/{id}` (and the dashboard's form, with the acting key as `creator`,
    which may not give a key more rights than its own)."""
    key = await get_key(session, key_id, account_id=account_id)
    # The account first, as every hold and settlement locks it: the key's row after it.
    account = await credits.lock_account(session, key.account_id)
    locked = await repository.get_key(session, key_id, lock=True)
    assert locked is not None
    key = locked
    if creator is not None:
        _check_rights(creator, account, changes)
    if changes.name is not UNSET:
        key.name = changes.name
    if changes.scope is not UNSET:
        key.scope = changes.scope.value
    if changes.allowed_models is not UNSET:
        models = changes.allowed_models
        key.allowed_models = None if models is None else list(models)
    if changes.expires_at is not UNSET:
        key.expires_at = changes.expires_at
    if changes.spend_limit is not UNSET:
        await credits.set_key_limit(session, account, key.id, changes.spend_limit)
    await session.flush()
    return key, account


_PERIOD_RANK = {period: rank for rank, period in enumerate(LimitPeriod)}


def _check_rights(creator: Principal, account: Account, changes: KeyChanges) -> None:
    """A customer's key gives no more than it has (SPEC 3.6): not `full` from `inference`, no
    higher or longer limit than its own, no model it may not use, no later expiry."""
    if creator.scope is not KeyScope.FULL:
        raise PermissionDenied("Only a key with scope full can manage keys.")
    own = SpendLimit.from_stored(account.key_spend_limits.get(str(creator.api_key_id)))
    if own is not None:
        wanted = changes.spend_limit
        if wanted is UNSET or wanted is None:
            raise PermissionDenied(
                "Your key has a spend limit, so the keys it creates need one that is no higher."
            )
        if wanted.amount > own.amount or _PERIOD_RANK[wanted.period] > _PERIOD_RANK[own.period]:
            raise PermissionDenied("A key's spend limit cannot be higher than your key's own.")
    if creator.allowed_models is not None:
        models = changes.allowed_models
        if models is UNSET or models is None:
            raise PermissionDenied(
                "Your key may use only some models, so the keys it creates must name theirs."
            )
        for name in models:
            base = name.removesuffix("-online").removesuffix("-deep")
            if not creator.allows(name, base, base != name):
                raise PermissionDenied(f"Your key may not use {name}, so it cannot allow it.")
    if creator.expires_at is not None:
        expires = changes.expires_at
        if expires is UNSET or expires is None or expires > creator.expires_at:
            raise PermissionDenied(
                "Your key expires, so the keys it creates must expire no later than it does."
            )


async def revoke_key(
    session: AsyncSession, key_id: uuid.UUID, *, account_id: uuid.UUID | None = None
) -> ApiKey:
    """Revoke a key; with `account_id` (a customer acting), only a key of that account: any
    other is "not found", like a made-up id."""
    key = await repository.revoke_key(session, key_id, datetime.now(UTC), account_id=account_id)
    if key is None:
        raise NotFound(f"No API key with id {key_id}", param="key_id")
    return key


@dataclass(frozen=True, slots=True)
class Suspension:
    account: Account
    changed: bool


async def suspend(session: AsyncSession, account_id: uuid.UUID, reason: str) -> Suspension:
    """Idempotent: suspending a suspended account keeps its first time and reason."""
    account = await credits.lock_account(session, account_id)
    if account.suspended_at is not None:
        return Suspension(account, changed=False)
    account.suspended_at = datetime.now(UTC)
    account.suspension_reason = reason
    await session.flush()
    await notifications.emit(session, account.id, EventType.ACCOUNT_SUSPENDED, {"reason": reason})
    return Suspension(account, changed=True)


async def unsuspend(session: AsyncSession, account_id: uuid.UUID) -> Suspension:
    account = await credits.lock_account(session, account_id)
    if account.suspended_at is None:
        return Suspension(account, changed=False)
    account.suspended_at = None
    account.suspension_reason = None
    await session.flush()
    return Suspension(account, changed=True)


def key_limit(account: Account, key: ApiKey) -> SpendLimit | None:
    return SpendLimit.from_stored(account.key_spend_limits.get(str(key.id)))


def key_view(key: ApiKey, account: Account, plaintext: str | None = None) -> dict[str, Any]:
    limit = key_limit(account, key)
    view: dict[str, Any] = {
        "id": str(key.id),
        "object": "api_key",
        "account_id": str(key.account_id),
        "name": key.name,
        "prefix": key.prefix,
        "scope": key.scope,
        "created_at": _instant(key.created_at),
        "expires_at": _instant(key.expires_at),
        "allowed_models": key.allowed_models,
        "spend_limit": None if limit is None else limit.view(),
        "revoked": key.revoked_at is not None,
    }
    if plaintext is not None:
        view["key"] = plaintext
    return view


def _instant(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_id(value: str, *, param: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError as exc:
        raise NotFound(f"No {param.removesuffix('_id')} with id {value}", param=param) from exc
