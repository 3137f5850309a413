"""Holds and settlements against the real database: no overdraft under concurrency, no double
charge on retry, no hold outliving its process."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg
import msgspec
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.accounts import service as accounts
from app.credits import service as credits
from app.credits.holds import HoldKeeper
from app.errors import InvalidApiKey
from app.metering.schemas import Settlement
from app.metering.writer import UsageWriter
from tests.support.events import usage_event


@pytest.fixture
async def keeper_for(clean_db: AsyncEngine) -> AsyncIterator[Callable[..., HoldKeeper]]:
    """HoldKeepers as separate processes would have them, closed after the test."""
    made: list[HoldKeeper] = []

    def make(**options: Any) -> HoldKeeper:
        made.append(HoldKeeper(clean_db, **options))
        return made[-1]

    yield make
    for keeper in made:
        await keeper.close()


async def _account(engine: AsyncEngine, balance: str) -> uuid.UUID:
    """An account funded through the ledger, as every balance must be."""
    async with AsyncSession(engine) as session, session.begin():
        account = await accounts.create_account(session, name="T", email=None)
        account_id = account.id
        await credits.add_credit(
            session, account_id, amount=Decimal(balance), kind="grant", reference="seed"
        )
    return account_id


async def _totals(engine: AsyncEngine, account_id: uuid.UUID) -> dict[str, Decimal]:
    async with engine.connect() as connection:
        row = (
            await connection.execute(
                text("SELECT balance, held, total_usage FROM accounts WHERE id = :id"),
                {"id": account_id},
            )
        ).one()
        ledger = await connection.scalar(
            text("SELECT coalesce(sum(amount), 0) FROM ledger_entries WHERE account_id = :id"),
            {"id": account_id},
        )
        holds = await connection.scalar(
            text("SELECT coalesce(sum(amount), 0) FROM holds WHERE account_id = :id"),
            {"id": account_id},
        )
    return {
        "balance": row.balance,
        "held": row.held,
        "usage": row.total_usage,
        "ledger": ledger,
        "holds": holds,
    }


async def test_parallel_holds_never_reserve_more_than_the_balance(
    clean_db: AsyncEngine, keeper_for: Callable[..., HoldKeeper]
) -> None:
    account_id = await _account(clean_db, "0.05")
    keeper = keeper_for()
    outcomes = await asyncio.gather(*(keeper.place(account_id, Decimal("0.01")) for _ in range(50)))
    assert sum(o.granted for o in outcomes) == 5
    totals = await _totals(clean_db, account_id)
    assert totals["held"] == totals["holds"] == Decimal("0.05")


async def test_holds_asked_together_are_placed_exactly_per_account(
    clean_db: AsyncEngine, keeper_for: Callable[..., HoldKeeper]
) -> None:
    """Concurrent holds go to the database together: an account that covers all of its holds
    gets them in one statement, one that does not gets exactly what fits, in order; an
    unknown account is refused, and none of it changes the others' outcome."""
    rich = await _account(clean_db, "10")
    poor = await _account(clean_db, "0.03")
    keeper = keeper_for()
    asked = [(rich, "0.5"), (poor, "0.02"), (rich, "0.5"), (poor, "0.02"), (poor, "0.01")] * 4
    results = await asyncio.gather(
        *(keeper.place(account, Decimal(amount)) for account, amount in asked),
        keeper.place(uuid.uuid4(), Decimal("1")),
        return_exceptions=True,
    )
    *outcomes, unknown = results
    assert isinstance(unknown, InvalidApiKey)
    granted = [(a, amount) for (a, amount), o in zip(asked, outcomes, strict=True) if o.granted]
    assert [amount for a, amount in granted if a == rich] == ["0.5"] * 8
    assert [amount for a, amount in granted if a == poor] == ["0.02", "0.01"]  # in order
    assert len({o.hold_id for o in outcomes}) == len(outcomes)
    for account, held in ((rich, Decimal("4")), (poor, Decimal("0.03"))):
        totals = await _totals(clean_db, account)
        assert totals["held"] == totals["holds"] == held


async def test_settlement_charges_once_and_releases_the_hold(
    clean_db: AsyncEngine, keeper_for: Callable[..., HoldKeeper]
) -> None:
    account_id = await _account(clean_db, "1.00")
    keeper = keeper_for()
    writer = UsageWriter(clean_db)
    writer.start()
    try:
        hold = await keeper.place(account_id, Decimal("0.5"))
        event = usage_event(account_id, "0.000123456789")
        settlement = Settlement(account_id, hold.hold_id, event)
        # The same settlement delivered again (a retry) and concurrently changes nothing more.
        await asyncio.gather(*(writer.settle(settlement) for _ in range(5)))
        await writer.settle(settlement)
    finally:
        await writer.close()
    totals = await _totals(clean_db, account_id)
    assert totals["balance"] == Decimal("0.999876543211")
    assert totals["usage"] == Decimal("0.000123456789")
    assert totals["held"] == totals["holds"] == 0
    assert totals["ledger"] == totals["balance"]
    async with clean_db.connect() as connection:
        assert await connection.scalar(text("SELECT count(*) FROM usage_events")) == 1


async def test_many_concurrent_settlements_share_commits_and_sum_exactly(
    clean_db: AsyncEngine,
) -> None:
    accounts = [await _account(clean_db, "100") for _ in range(5)]
    writer = UsageWriter(clean_db)
    writer.start()
    try:
        events = [usage_event(accounts[i % 5], f"0.00{i:04d}") for i in range(500)]
        await asyncio.gather(*(writer.settle(Settlement(e.account_id, None, e)) for e in events))
    finally:
        await writer.close()
    for account_id in accounts:
        spent = sum((e.cost for e in events if e.account_id == account_id), Decimal(0))
        totals = await _totals(clean_db, account_id)
        assert totals["balance"] == Decimal(100) - spent
        assert totals["ledger"] == totals["balance"]


async def test_back_dated_event_gets_its_month_partition(clean_db: AsyncEngine) -> None:
    account_id = await _account(clean_db, "1")
    event = usage_event(account_id, "0.01")
    old = msgspec.structs.replace(event, time=datetime(2024, 2, 29, 23, 59, tzinfo=UTC))
    writer = UsageWriter(clean_db)
    writer.start()
    try:
        await writer.settle(Settlement(account_id, None, old))
    finally:
        await writer.close()
    async with clean_db.connect() as connection:
        where = await connection.scalar(
            text("SELECT tableoid::regclass::text FROM usage_events WHERE event_key = :key"),
            {"key": old.event_key},
        )
    assert where == "usage_events_2024_02"


async def test_an_event_postgres_cannot_store_fails_alone(clean_db: AsyncEngine) -> None:
    """A value Postgres refuses (here a NUL in `user`, which callers now strip) fails only its
    own settlement: the others of its batch still commit, and nothing is retried for ever."""
    account_id = await _account(clean_db, "1")
    good = [usage_event(account_id, "0.01") for _ in range(3)]
    bad = msgspec.structs.replace(usage_event(account_id, "0.01"), user="a\x00b")
    writer = UsageWriter(clean_db)
    writer.start()
    try:
        outcomes = await asyncio.gather(
            *(writer.settle(Settlement(account_id, None, e)) for e in [*good, bad]),
            return_exceptions=True,
        )
    finally:
        await writer.close()
    assert outcomes[:3] == [None, None, None]
    assert isinstance(outcomes[3], asyncpg.DataError)
    totals = await _totals(clean_db, account_id)
    assert totals["balance"] == Decimal("0.97") == totals["ledger"]


async def test_holds_of_a_dead_process_expire(
    clean_db: AsyncEngine, keeper_for: Callable[..., HoldKeeper]
) -> None:
    account_id = await _account(clean_db, "1")
    dead = keeper_for(lease_seconds=0.2)
    assert (await dead.place(account_id, Decimal("1"))).granted
    alive = keeper_for()
    assert not (await alive.place(account_id, Decimal("0.5"))).granted
    await asyncio.sleep(0.3)
    # Any instance sweeps: a server of another test on this database may have done it first.
    assert await alive.maintain_once() in (0, 1)
    totals = await _totals(clean_db, account_id)
    assert totals["held"] == totals["holds"] == 0
    assert (await alive.place(account_id, Decimal("0.5"))).granted
