"""All SQL of metering that is not money: usage event partitions and the lookups that validate
ingested events. The events themselves are written by credits' settle statement, with their
ledger entries (`app.credits.repository.settle`)."""

from __future__ import annotations

import uuid
from collections.abc import Collection
from datetime import date
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.engine import DriverStatement

ENSURE_PARTITION_SQL = text("SELECT ensure_usage_events_partition(:month)")
# The usage writer runs it on its own connection, before a batch of a new month.
ENSURE_PARTITION = DriverStatement.of(ENSURE_PARTITION_SQL)


async def ensure_partition(session: AsyncSession, month: date) -> None:
    await session.execute(ENSURE_PARTITION_SQL, {"month": month})


GENERATION_SQL = text(
    """
    SELECT * FROM usage_events
    WHERE account_id = :account_id AND request_id = :request_id
    ORDER BY time DESC LIMIT 1
    """
)


async def generation(session: AsyncSession, account_id: uuid.UUID, request_id: str) -> Any:
    """The account's newest usage event of a request id (a client may send one twice)."""
    return (
        await session.execute(GENERATION_SQL, {"account_id": account_id, "request_id": request_id})
    ).one_or_none()


KNOWN_ACCOUNTS_SQL = text("SELECT id FROM accounts WHERE id = ANY(CAST(:ids AS uuid[]))")
KEY_ACCOUNTS_SQL = text("SELECT id, account_id FROM api_keys WHERE id = ANY(CAST(:ids AS uuid[]))")


async def known_accounts(
    session: AsyncSession, account_ids: Collection[uuid.UUID]
) -> set[uuid.UUID]:
    """Which of `account_ids` exist (for validating ingested events before any is written)."""
    result = await session.execute(KNOWN_ACCOUNTS_SQL, {"ids": list(account_ids)})
    return {row.id for row in result}


async def key_accounts(
    session: AsyncSession, key_ids: Collection[uuid.UUID]
) -> dict[uuid.UUID, uuid.UUID]:
    """API key id → its account, for those of `key_ids` that exist (revoked ones included)."""
    result = await session.execute(KEY_ACCOUNTS_SQL, {"ids": list(key_ids)})
    return {row.id: row.account_id for row in result}
