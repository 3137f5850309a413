"""All SQL that writes money: ledger entries, the balances and running totals kept on the
account beside them, and credit holds. Nothing outside `app.credits` writes these tables.

Two statements run on asyncpg directly for speed (the request path's credit hold and the
usage writer's settlement); asyncpg is used nowhere outside `app.credits` and `app.db.engine`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal

import asyncpg
import msgspec
from sqlalchemy import select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.credits.schemas import LedgerKind
from app.db.engine import DriverStatement
from app.db.models import Account, LedgerEntry
from app.metering.schemas import EVENT_COLUMNS, Settlement, UsageEventRecord


async def append_entry(
    session: AsyncSession,
    *,
    account_id: uuid.UUID,
    kind: LedgerKind,
    amount: Decimal,
    reference: str,
    description: str | None = None,
    details: dict[str, object] | None = None,
) -> LedgerEntry | None:
    """Insert one ledger entry and move the account's totals in the same transaction.

    Returns None when an entry with this reference already exists: the unique constraint on
    (account_id, reference) makes every retried credit a no-op, also under concurrency (a
    second inserter waits on the index until the first commits, then does nothing)."""
    entry_id = uuid.uuid4()
    inserted = await session.scalar(
        insert(LedgerEntry)
        .values(
            account_id=account_id,
            id=entry_id,
            kind=kind,
            amount=amount,
            reference=reference,
            description=description,
            details=details,
        )
        .on_conflict_do_nothing(index_elements=["account_id", "reference"])
        .returning(LedgerEntry.id)
    )
    if inserted is None:
        return None
    totals: dict[str, object] = {"balance": Account.balance + amount}
    if kind.moves_total_purchased:
        totals["total_purchased"] = Account.total_purchased + amount
    if kind.moves_total_usage:
        # The settle statement below moves it for usage in SQL, the same way.
        totals["total_usage"] = Account.total_usage - amount
    await session.execute(update(Account).where(Account.id == account_id).values(**totals))
    return await session.get(LedgerEntry, (account_id, entry_id))


# The batch travels as ONE JSON array of events, each an array of its fields by position
# (msgspec encodes it in C, Postgres parses it in C). Measured here on 5,000-event batches: a
# third of the Python CPU of 20 typed parameter arrays, and ~10 % less Postgres CPU than objects
# with field names, which Postgres parses and sorts per event. Money is a JSON string, read
# exactly.
_NAMES = ", ".join(f'"{name}"' for name, _ in EVENT_COLUMNS)
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
        SELECT account_id, id, '{LedgerKind.USAGE}', -cost, 'usage:' || event_key FROM input
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


async def settle(
    session: AsyncSession,
    events: Sequence[UsageEventRecord],
    holds: Iterable[tuple[uuid.UUID, uuid.UUID]] = (),
) -> int:
    """Write every event, its usage ledger entry and every hold release (account id, hold id)
    in one statement, in the caller's transaction. Returns how many events were new."""
    return int(await session.scalar(SETTLE_SQL, _settle_params(events, holds)) or 0)


def _settlement_params(batch: Sequence[Settlement]) -> dict[str, object]:
    return _settle_params(
        (s.event for s in batch if s.event is not None),
        ((s.account_id, s.hold_id) for s in batch if s.hold_id is not None),
    )


# A settlement that retrying cannot fix (an account deleted mid-request, a value Postgres cannot
# store), and failures a fresh connection may get past (a lost connection, a failover).
SETTLEMENT_REFUSED = (asyncpg.IntegrityConstraintViolationError, asyncpg.DataError)
SETTLEMENT_FAILED = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError)


class SettlementConnection:
    """The usage writer's own connection, on asyncpg directly: each call is a statement of its
    own, atomic and committed (durably) when it returns; no BEGIN/COMMIT round trips."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._driver: asyncpg.Connection | None = None

    async def _connection(self) -> asyncpg.Connection:
        if self._driver is None or self._driver.is_closed():
            self._driver = await asyncpg.connect(
                self._dsn, server_settings={"application_name": "tollgate-writer"}
            )
        return self._driver

    async def run(self, statement: DriverStatement, *args: object) -> None:
        """Another domain's statement that must precede a settlement (a new month's partition)."""
        await (await self._connection()).execute(statement.sql, *args)

    async def settle(self, batch: Sequence[Settlement]) -> int:
        """`settle` for a batch of settlements; returns how many events were new."""
        params = _settlement_params(batch)
        return int(
            await (await self._connection()).fetchval(_SETTLE.sql, *_SETTLE.args(params)) or 0
        )

    def drop(self) -> None:
        """After a failure the connection may be broken: the next call opens a fresh one."""
        if self._driver is not None:
            self._driver.terminate()
            self._driver = None

    async def close(self) -> None:
        if self._driver is not None:
            await self._driver.close()
            self._driver = None


async def find_entry(
    session: AsyncSession, account_id: uuid.UUID, reference: str
) -> LedgerEntry | None:
    return await session.scalar(
        select(LedgerEntry).where(
            LedgerEntry.account_id == account_id, LedgerEntry.reference == reference
        )
    )


@dataclass(frozen=True, slots=True)
class HoldOutcome:
    hold_id: uuid.UUID
    granted: bool
    available: Decimal  # before this hold
    total_purchased: Decimal
    total_usage: Decimal


# Holds of one or many requests in one statement, atomic: the UPDATE re-checks its condition on
# the latest row version, so concurrent holds from any number of processes can never reserve
# more than the balance. Each account's holds are granted together when its available credit
# covers them all, else none of them (the caller then places them one by one). Rows are locked
# in id order, as settlements lock them.
HOLDS_SQL = text(
    """
    WITH input AS (
        SELECT * FROM unnest(
            CAST(:account_ids AS uuid[]), CAST(:ids AS uuid[]), CAST(:amounts AS numeric[])
        ) AS t(account_id, id, amount)
    ), wanted AS (
        SELECT account_id, sum(amount) AS total FROM input GROUP BY account_id
    ), locked AS (
        SELECT id FROM accounts WHERE id IN (SELECT account_id FROM wanted)
        ORDER BY id FOR NO KEY UPDATE
    ), reserved AS (
        UPDATE accounts a SET held = a.held + w.total
        FROM locked, wanted w
        WHERE a.id = locked.id AND w.account_id = locked.id AND a.balance - a.held >= w.total
        RETURNING a.id
    ), placed AS (
        INSERT INTO holds (account_id, id, amount, expires_at)
        SELECT i.account_id, i.id, i.amount, now() + make_interval(secs => :lease)
        FROM input i JOIN reserved r ON r.id = i.account_id
        RETURNING 1
    )
    SELECT a.id, a.balance, a.held, a.total_purchased, a.total_usage,
           a.id IN (SELECT id FROM reserved) AS granted,
           -- A hold is a reservation, not money: it need not wait for the WAL flush. Lost in a
           -- database crash, it vanishes together with its `held` increment.
           set_config('synchronous_commit', 'off', true) AS async_commit
    FROM accounts a WHERE a.id IN (SELECT account_id FROM wanted)
    """
)
_HOLDS = DriverStatement.of(HOLDS_SQL)


async def place_holds(
    driver: asyncpg.Connection,
    holds: list[tuple[uuid.UUID, uuid.UUID, Decimal]],
    *,
    lease_seconds: float,
) -> dict[uuid.UUID, HoldOutcome]:
    """(account id, hold id, amount) → per account: whether all its holds were granted, and
    its totals before them (`hold_id` is that of its first hold; the caller sets each one's).
    Accounts that do not exist are missing."""
    params = {
        "account_ids": [account_id for account_id, _, _ in holds],
        "ids": [hold_id for _, hold_id, _ in holds],
        "amounts": [amount for _, _, amount in holds],
        "lease": lease_seconds,
    }
    first: dict[uuid.UUID, uuid.UUID] = {}
    for account_id, hold_id, _ in holds:
        first.setdefault(account_id, hold_id)
    rows = await driver.fetch(_HOLDS.sql, *_HOLDS.args(params))
    return {
        row["id"]: HoldOutcome(
            hold_id=first[row["id"]],
            granted=row["granted"],
            available=row["balance"] - row["held"],
            total_purchased=row["total_purchased"],
            total_usage=row["total_usage"],
        )
        for row in rows
    }


RENEW_SQL = text(
    """
    UPDATE holds SET expires_at = now() + make_interval(secs => :lease)
    FROM unnest(CAST(:account_ids AS uuid[]), CAST(:ids AS uuid[])) AS live(account_id, id)
    WHERE holds.account_id = live.account_id AND holds.id = live.id
    """
)

SWEEP_SQL = text(
    """
    WITH expired AS (
        DELETE FROM holds WHERE expires_at < now() RETURNING account_id, amount
    ), locked AS (
        -- In id order, as holds and settlements lock accounts: no deadlock with them.
        SELECT id FROM accounts WHERE id IN (SELECT account_id FROM expired)
        ORDER BY id FOR NO KEY UPDATE
    ), released AS (
        UPDATE accounts a SET held = a.held - e.total
        FROM locked, (SELECT account_id, sum(amount) AS total FROM expired GROUP BY account_id) e
        WHERE a.id = locked.id AND e.account_id = locked.id
        RETURNING a.id
    )
    SELECT count(*) FROM released
    """
)


_RENEW = DriverStatement.of(RENEW_SQL)
_SWEEP = DriverStatement.of(SWEEP_SQL)


async def renew_holds(
    driver: asyncpg.Connection, holds: list[tuple[uuid.UUID, uuid.UUID]], lease_seconds: float
) -> None:
    params = {
        "account_ids": [account_id for account_id, _ in holds],
        "ids": [hold_id for _, hold_id in holds],
        "lease": lease_seconds,
    }
    await driver.execute(_RENEW.sql, *_RENEW.args(params))


async def sweep_expired_holds(driver: asyncpg.Connection) -> int:
    """Release holds whose owner stopped renewing them (its process died)."""
    return int(await driver.fetchval(_SWEEP.sql) or 0)
