"""Scheduled jobs' names, locks and saved state (SPEC 8). Every job, and every reader of a job's
state (the usage query, the dashboard, the health of reconciliation), goes through here.

A run takes its job's transaction-scoped advisory lock: one instance does the run, the lock
ends with the transaction, so a crashed instance never keeps it. What a job must remember
between runs (the rollup watermark, the last reconciliation) is a row of `job_state`.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession


class JobName(StrEnum):
    USAGE_ROLLUPS = "usage_rollups"
    USAGE_PARTITIONS = "usage_partitions"
    RECONCILIATION = "reconciliation"
    RECONCILIATION_GAUGE = "reconciliation_gauge"
    MONTHLY_INVOICES = "monthly_invoices"
    AUTO_RECHARGE = "auto_recharge"
    STRIPE_EVENT_RETRY = "stripe_event_retry"
    NOTIFICATION_DISPATCH = "notification_dispatch"


def lock_key(name: str) -> int:
    """A stable 64-bit advisory lock key per job (Python's `hash` differs per process)."""
    return int.from_bytes(hashlib.sha256(f"tollgate.job.{name}".encode()).digest()[:8], signed=True)


def watermark_sql(name: JobName) -> str:
    """The job's watermark as an SQL expression (`-infinity` before its first run), for
    statements that must read it in the same snapshot as the data it marks."""
    return f"(SELECT coalesce(max(watermark), '-infinity') FROM job_state WHERE name = '{name}')"  # noqa: S608 (a JobName)


# The start of the oldest transaction open in this database, if any. A row stamped with its
# transaction's start (`now()`, as `ingested_at` is) becomes visible only at that transaction's
# commit: every row stamped before this moment is committed (or gone) and visible to the next
# statement's snapshot.
_OLDEST_OPEN_TRANSACTION = """
    (SELECT min(xact_start) FROM pg_stat_activity
     WHERE datname = current_database() AND pid <> pg_backend_pid()
       AND backend_type = 'client backend' AND xact_start IS NOT NULL)
"""
HORIZON_SQL = text(
    f"""
    SELECT least(now() - make_interval(secs => :lag), {_OLDEST_OPEN_TRANSACTION}) AS horizon,
           now() AS now
    """
)
TRY_LOCK_SQL = text("SELECT pg_try_advisory_xact_lock(:key)")
TRY_SESSION_LOCK_SQL = text("SELECT pg_try_advisory_lock(:key)")
UNLOCK_SQL = text("SELECT pg_advisory_unlock(:key)")
WATERMARK_SQL = text("SELECT watermark FROM job_state WHERE name = :name FOR UPDATE")
SET_WATERMARK_SQL = text(
    """
    INSERT INTO job_state (name, watermark, ran_at) VALUES (:name, :watermark, now())
    ON CONFLICT (name) DO UPDATE SET watermark = excluded.watermark, ran_at = excluded.ran_at
    """
)
SAVE_RESULT_SQL = text(
    """
    INSERT INTO job_state (name, ran_at, result) VALUES (:name, now(), CAST(:result AS jsonb))
    ON CONFLICT (name) DO UPDATE SET ran_at = excluded.ran_at, result = excluded.result
    """
)
RESULT_SQL = text("SELECT ran_at, result FROM job_state WHERE name = :name")


async def try_lock(session: AsyncSession, name: str) -> bool:
    """Take the job's advisory lock for this transaction if no other instance holds it."""
    return bool(await session.scalar(TRY_LOCK_SQL, {"key": lock_key(name)}))


@asynccontextmanager
async def held_outside_transactions(engine: AsyncEngine, name: str) -> AsyncIterator[bool]:
    """The job's lock for a run that opens a unit of work per item (an invoice per account, a
    charge per recharge): taken on a connection of its own in autocommit, so no transaction
    stays open for the run's length (one would hold back the rollup horizon and the invoice
    cutoff, which wait for the oldest open transaction). Yields whether it was taken; it is
    released at the end, or when the connection dies with its process."""
    async with engine.connect() as connection:
        autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
        key = {"key": lock_key(name)}
        taken = bool(await autocommit.scalar(TRY_SESSION_LOCK_SQL, key))
        try:
            yield taken
        finally:
            if taken:
                await autocommit.execute(UNLOCK_SQL, key)


async def settled_horizon(session: AsyncSession, lag_seconds: float) -> tuple[datetime, datetime]:
    """(horizon, now): every row stamped with its transaction's start before the horizon is
    committed. `lag_seconds` is a margin for a transaction that has begun but not yet
    published its start; the horizon is at most the current transaction's start."""
    row = (await session.execute(HORIZON_SQL, {"lag": lag_seconds})).one()
    return row.horizon, row.now


async def watermark(session: AsyncSession, name: JobName) -> datetime | None:
    """The job's watermark, locked for this transaction; None before its first run."""
    mark: datetime | None = await session.scalar(WATERMARK_SQL, {"name": name})
    return mark


async def set_watermark(session: AsyncSession, name: JobName, mark: datetime) -> None:
    await session.execute(SET_WATERMARK_SQL, {"name": name, "watermark": mark})


async def save_result(session: AsyncSession, name: JobName, result_json: str) -> None:
    await session.execute(SAVE_RESULT_SQL, {"name": name, "result": result_json})


async def last_result(
    session: AsyncSession, name: JobName
) -> tuple[datetime | None, dict[str, Any] | None]:
    row = (await session.execute(RESULT_SQL, {"name": name})).one_or_none()
    return (None, None) if row is None else (row.ran_at, row.result)
