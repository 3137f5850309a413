"""Account and key operations. Never commits: the request or command that calls it does."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.accounts import repository
from app.accounts.keys import generate_key
from app.db.models import Account, ApiKey
from app.errors import InvalidRequest, NotFound


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
    session: AsyncSession, account_id: uuid.UUID, *, name: str | None
) -> tuple[ApiKey, str]:
    """Returns the stored key and its plaintext, which is never retrievable again."""
    await get_account(session, account_id)
    new = generate_key()
    key = await repository.insert_key(
        session, account_id=account_id, name=name, key_hash=new.key_hash, prefix=new.prefix
    )
    return key, new.plaintext


async def revoke_key(
    session: AsyncSession, key_id: uuid.UUID, *, account_id: uuid.UUID | None = None
) -> ApiKey:
    """Revoke a key; with `account_id` (a customer acting), only a key of that account: any
    other is "not found", like a made-up id."""
    key = await repository.revoke_key(session, key_id, datetime.now(UTC), account_id=account_id)
    if key is None:
        raise NotFound(f"No API key with id {key_id}", param="key_id")
    return key


def key_view(key: ApiKey, plaintext: str | None = None) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": str(key.id),
        "object": "api_key",
        "account_id": str(key.account_id),
        "name": key.name,
        "prefix": key.prefix,
        "revoked": key.revoked_at is not None,
    }
    if plaintext is not None:
        view["key"] = plaintext
    return view


def parse_id(value: str, *, param: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError as exc:
        raise NotFound(f"No {param.removesuffix('_id')} with id {value}", param=param) from exc
