"""All SQL for accounts and keys."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import Row, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import Account, ApiKey


async def insert_account(session: AsyncSession, *, name: str, email: str | None) -> Account:
    account = Account(id=uuid.uuid4(), name=name, email=email)
    session.add(account)
    await session.flush()
    await session.refresh(account)
    return account


async def get_account(session: AsyncSession, account_id: uuid.UUID) -> Account | None:
    return await session.get(Account, account_id)


async def insert_key(
    session: AsyncSession,
    *,
    account_id: uuid.UUID,
    name: str | None,
    key_hash: bytes,
    prefix: str,
    scope: str,
    allowed_models: list[str] | None,
    expires_at: datetime | None,
) -> ApiKey:
    key = ApiKey(
        id=uuid.uuid4(),
        account_id=account_id,
        name=name,
        key_hash=key_hash,
        prefix=prefix,
        scope=scope,
        allowed_models=allowed_models,
        expires_at=expires_at,
    )
    session.add(key)
    await session.flush()
    await session.refresh(key)
    return key


async def get_key(session: AsyncSession, key_id: uuid.UUID, *, lock: bool = False) -> ApiKey | None:
    return await session.get(ApiKey, key_id, with_for_update=lock, populate_existing=lock)


async def list_keys(session: AsyncSession, account_id: uuid.UUID) -> list[ApiKey]:
    result = await session.scalars(
        select(ApiKey).where(ApiKey.account_id == account_id).order_by(ApiKey.created_at)
    )
    return list(result)


async def revoke_key(
    session: AsyncSession, key_id: uuid.UUID, at: datetime, *, account_id: uuid.UUID | None = None
) -> ApiKey | None:
    """Idempotent: revoking a revoked key keeps its first revocation time. None when there is
    no such key (of `account_id`, when given)."""
    key = await session.get(ApiKey, key_id, with_for_update=True)
    if key is None or (account_id is not None and key.account_id != account_id):
        return None
    if key.revoked_at is None:
        key.revoked_at = at
        await session.flush()
    return key


async def find_active_key(
    session: AsyncSession, key_hash: bytes
) -> Row[uuid.UUID, uuid.UUID, str, list[str] | None, datetime | None, str] | None:
    """Identity and rights of an unrevoked key with this hash."""
    return (
        await session.execute(
            select(
                ApiKey.id,
                ApiKey.account_id,
                ApiKey.scope,
                ApiKey.allowed_models,
                ApiKey.expires_at,
                ApiKey.prefix,
            ).where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None))
        )
    ).one_or_none()
