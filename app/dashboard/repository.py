"""The dashboard's own SQL: may a session's key still sign in (and whose account is it), and
when was each key last used. Everything else the pages show is read through the other domains'
services."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.job_state import JobName, watermark_sql
from app.db.models import Account, ApiKey


@dataclass(frozen=True, slots=True)
class SessionKey:
    """A session's key as every page checks it, with its account's name and currency."""

    account_name: str
    currency: str
    revoked: bool
    scope: str
    expires_at: datetime | None


async def session_key(
    session: AsyncSession, key_id: uuid.UUID, account_id: uuid.UUID
) -> SessionKey | None:
    """The key if it is still the account's, revoked or not: the caller says why it may not
    sign in, in one primary key read."""
    row = (
        await session.execute(
            select(
                Account.name,
                Account.currency,
                ApiKey.revoked_at,
                ApiKey.scope,
                ApiKey.expires_at,
            )
            .join(ApiKey, ApiKey.account_id == Account.id)
            .where(ApiKey.id == key_id, ApiKey.account_id == account_id)
        )
    ).one_or_none()
    if row is None:
        return None
    return SessionKey(row.name, row.currency, row.revoked_at is not None, row.scope, row.expires_at)


# Keys don't record their last use (that would be a write per request on the hot path), so it is
# read from usage: the newest hourly rollup bucket of each key narrowed to its exact newest
# event, and the events ingested since the rollup watermark. Both are index range scans of this
# account only.
LAST_USED_SQL = text(
    f"""
    WITH mark AS (
        SELECT {watermark_sql(JobName.USAGE_ROLLUPS)} AS settled
    ), rolled AS (
        SELECT r.api_key_id, max(r.bucket) AS bucket
        FROM usage_rollups r
        WHERE r.account_id = :account_id AND r.bucket_minutes = 60
          AND r.api_key_id = ANY(CAST(:key_ids AS uuid[]))
        GROUP BY r.api_key_id
    ), fresh AS (
        SELECT e.api_key_id, max(e.time) AS used
        FROM usage_events e
        WHERE e.account_id = :account_id AND e.ingested_at >= (SELECT settled FROM mark)
          AND e.api_key_id = ANY(CAST(:key_ids AS uuid[]))
        GROUP BY e.api_key_id
    ), exact AS (
        SELECT rolled.api_key_id,
               (SELECT max(e.time) FROM usage_events e
                WHERE e.account_id = :account_id AND e.api_key_id = rolled.api_key_id
                  AND e.time >= rolled.bucket AND e.time < rolled.bucket + interval '1 hour')
                   AS used
        FROM rolled
    )
    SELECT api_key_id, max(used) AS used
    FROM (SELECT * FROM fresh UNION ALL SELECT * FROM exact) AS u
    GROUP BY api_key_id
    """
)


async def keys_last_used(
    session: AsyncSession, account_id: uuid.UUID, key_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, datetime]:
    if not key_ids:
        return {}
    rows = await session.execute(
        LAST_USED_SQL, {"account_id": account_id, "key_ids": list(key_ids)}
    )
    return {row.api_key_id: row.used for row in rows if row.used is not None}
