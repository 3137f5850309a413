"""All SQL for the ledger and balances."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from decimal import Decimal

import asyncpg
from sqlalchemy import select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.engine import DriverStatement
from app.db.models import Account, LedgerEntry

# How each kind moves the running totals kept on the account beside the balance.
_PURCHASE_KINDS = frozenset({"purchase", "refund"})


async def append_entry(
    session: AsyncSession,
    *,
    account_id: uuid.UUID,
    kind: str,
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
    if kind in _PURCHASE_KINDS:
        totals["total_purchased"] = Account.total_purchased + amount
    if kind == "usage":
        totals["total_usage"] = Account.total_usage - amount
    await session.execute(update(Account).where(Account.id == account_id).values(**totals))
    return await session.get(LedgerEntry, (account_id, entry_id))


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
