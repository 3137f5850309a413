"""All SQL of metering: one statement settles a whole batch of requests."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Iterable, Sequence
from datetime import date

import asyncpg
import msgspec
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db.engine import DriverStatement
from app.metering.schemas import Settlement, UsageEventRecord

# Postgres types of the stored columns, named as the record's fields (a field without one fails
# at import).
_COLUMN_TYPES = {
    "account_id": "uuid",
    "time": "timestamptz",
    "event_key": "text",
    "api_key_id": "uuid",
    "user": "text",
    "endpoint": "text",
    "model": "text",
    "prompt_tokens": "bigint",
    "cached_tokens": "bigint",
    "completion_tokens": "bigint",
    "images": "integer",
    "search_requests": "integer",
    "audio_seconds": "numeric",
    "cost": "numeric",
    "currency": "text",
    "price_version": "text",
    "charge": "jsonb",
    "usage_source": "text",
    "outcome": "text",
}
EVENT_COLUMNS = tuple((name, _COLUMN_TYPES[name]) for name in UsageEventRecord.__struct_fields__)
_NAMES = ", ".join(f'"{name}"' for name, _ in EVENT_COLUMNS)
# The batch travels as ONE JSON array of events, each an array of its fields by position
# (msgspec encodes it in C, Postgres parses it in C). Measured here on 5,000-event batches: a
# third of the Python CPU of 20 typed parameter arrays, and ~10 % less Postgres CPU than objects
# with field names, which Postgres parses and sorts per event. Money is a JSON string, read
# exactly.
_FIELDS = ", ".join(
    f'e -> {i} AS "{name}"' if kind == "jsonb" else f'CAST(e ->> {i} AS {kind}) AS "{name}"'
    for i, (name, kind) in enumerate(EVENT_COLUMNS)
)

# The ledger entry goes first: its unique (account_id, reference) admits each event once, so a
# retried batch inserts only what is new, and balances move only by what was inserted. An event
# takes the id of its ledger entry, drawn here; it also tells which copy of an event sent twice
# in one batch was admitted (the first).
SETTLE_SQL = text(
    f"""
    WITH input AS MATERIALIZED (
        SELECT gen_random_uuid() AS id, {_FIELDS}
        FROM jsonb_array_elements(CAST(:events AS jsonb)) AS e
    ), ledger AS (
        INSERT INTO ledger_entries (account_id, id, kind, amount, reference)
        SELECT account_id, id, 'usage', -cost, 'usage:' || event_key FROM input
        ON CONFLICT (account_id, reference) DO NOTHING
        RETURNING account_id, id, amount
    ), events AS (
        INSERT INTO usage_events (id, {_NAMES})
        SELECT id, {_NAMES} FROM input JOIN ledger USING (account_id, id)
        RETURNING 1
    ), released AS (
        DELETE FROM holds h
        USING unnest(CAST(:hold_accounts AS uuid[]), CAST(:hold_ids AS uuid[])) AS r(account_id, id)
        WHERE h.account_id = r.account_id AND h.id = r.id
        RETURNING h.account_id, h.amount
    ), deltas AS (
        SELECT account_id, amount AS spent, 0::numeric AS released FROM ledger
        UNION ALL
        SELECT account_id, 0::numeric, amount FROM released
    ), locked AS (
        -- Account rows are locked in id order whatever plan the UPDATE gets (a hash join
        -- would take them in physical order), so concurrent settlements of several accounts
        -- (the usage writers of several processes, ingestions) queue instead of deadlocking.
        SELECT id FROM accounts WHERE id IN (SELECT account_id FROM deltas)
        ORDER BY id FOR NO KEY UPDATE
    ), moved AS (
        UPDATE accounts a
        SET balance = a.balance + d.spent,
            total_usage = a.total_usage - d.spent,
            held = a.held - d.released
        FROM locked, (
            SELECT account_id, sum(spent) AS spent, sum(released) AS released
            FROM deltas GROUP BY account_id
        ) d
        WHERE a.id = locked.id AND d.account_id = locked.id
        RETURNING a.id
    )
    SELECT (SELECT count(*) FROM events) AS inserted
    """
)


_SETTLE = DriverStatement.of(SETTLE_SQL)


_encode = msgspec.json.Encoder(decimal_format="string").encode


def _event_order(event: UsageEventRecord) -> tuple[int, str]:
    return event.account_id.int, event.event_key


def _settle_params(
    events: Iterable[UsageEventRecord], holds: Iterable[tuple[uuid.UUID, uuid.UUID]]
) -> dict[str, object]:
    # Ledger entries in (account, event key) order: two batches holding the same events (a
    # retried ingestion running beside the first) wait on each other's unique keys in the same
    # order. Keys of ints and strings compare in C, UUIDs in Python.
    released = sorted(holds, key=lambda hold: hold[0].int)
    return {
        "events": _encode(sorted(events, key=_event_order)).decode(),
        "hold_accounts": [account_id for account_id, _ in released],
        "hold_ids": [hold_id for _, hold_id in released],
    }


def _batch_params(batch: Sequence[Settlement]) -> dict[str, object]:
    return _settle_params(
        (s.event for s in batch if s.event is not None),
        ((s.account_id, s.hold_id) for s in batch if s.hold_id is not None),
    )


async def settle(connection: AsyncConnection, batch: Sequence[Settlement]) -> int:
    """Write every event, its usage ledger entry and every hold release of `batch` in one
    statement, in the caller's transaction. Returns how many events were new."""
    return int(await connection.scalar(SETTLE_SQL, _batch_params(batch)) or 0)


async def settle_events(connection: AsyncConnection, events: Sequence[UsageEventRecord]) -> int:
    """`settle` for events that held nothing (ingestion): no settlement wrapper per event."""
    return int(await connection.scalar(SETTLE_SQL, _settle_params(events, ())) or 0)


async def settle_now(driver: asyncpg.Connection, batch: Sequence[Settlement]) -> int:
    """`settle` as a statement of its own (committed when it returns), on asyncpg directly:
    the usage writer's hot path."""
    return int(await driver.fetchval(_SETTLE.sql, *_SETTLE.args(_batch_params(batch))) or 0)


ENSURE_PARTITION_SQL = text("SELECT ensure_usage_events_partition(:month)")
_ENSURE_PARTITION = DriverStatement.of(ENSURE_PARTITION_SQL)


async def ensure_partition(connection: AsyncConnection, month: date) -> None:
    await connection.execute(ENSURE_PARTITION_SQL, {"month": month})


async def ensure_partition_now(driver: asyncpg.Connection, month: date) -> None:
    await driver.execute(_ENSURE_PARTITION.sql, month)


KNOWN_ACCOUNTS_SQL = text("SELECT id FROM accounts WHERE id = ANY(CAST(:ids AS uuid[]))")
KEY_ACCOUNTS_SQL = text("SELECT id, account_id FROM api_keys WHERE id = ANY(CAST(:ids AS uuid[]))")


async def known_accounts(
    connection: AsyncConnection, account_ids: Collection[uuid.UUID]
) -> set[uuid.UUID]:
    """Which of `account_ids` exist (for validating ingested events before any is written)."""
    result = await connection.execute(KNOWN_ACCOUNTS_SQL, {"ids": list(account_ids)})
    return {row.id for row in result}


async def key_accounts(
    connection: AsyncConnection, key_ids: Collection[uuid.UUID]
) -> dict[uuid.UUID, uuid.UUID]:
    """API key id → its account, for those of `key_ids` that exist (revoked ones included)."""
    result = await connection.execute(KEY_ACCOUNTS_SQL, {"ids": list(key_ids)})
    return {row.id: row.account_id for row in result}
