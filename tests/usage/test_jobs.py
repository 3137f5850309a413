"""Scheduled jobs: one instance per run under the advisory lock, the rollup watermark never
passing an open transaction, partition maintenance, reconciliation and its gauge and CLI."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from apscheduler.triggers.interval import IntervalTrigger
from click.testing import CliRunner
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from app.accounts import service as accounts
from app.cli import reconcile_command
from app.credits import repository as ledger
from app.credits import service as credits
from app.db.job_state import lock_key
from app.jobs import Job, Scheduler, default_jobs, run_job
from app.metering import repository as metering
from app.metering.schemas import UsageEventRecord
from app.usage import reconciliation, rollups
from app.usage.partitions import maintain_partitions, months_from
from app.usage.rollups import roll_up
from tests.support.events import usage_event
from tests.usage.conftest import roll_up_now


async def _account(engine: AsyncEngine, credit: str = "10") -> uuid.UUID:
    async with AsyncSession(engine) as session, session.begin():
        account = await accounts.create_account(session, name="J", email=None)
        await credits.add_credit(
            session, account.id, amount=Decimal(credit), kind="grant", reference="seed"
        )
        return account.id


async def _settle(connection: AsyncConnection, event: UsageEventRecord) -> None:
    """Settle one event in the caller's transaction. Its partition is made beforehand, in a
    transaction of its own, as the writer does: making one locks the whole table."""
    async with connection.engine.connect() as other:
        await metering.ensure_partition(other, event.month)
        await other.commit()
    await ledger.settle(connection, [event])


async def _folded(engine: AsyncEngine, account_id: uuid.UUID) -> int:
    async with engine.connect() as connection:
        total = await connection.scalar(
            text(
                "SELECT coalesce(sum(requests), 0) FROM usage_rollups "
                "WHERE account_id = :a AND bucket_minutes = 15"
            ),
            {"a": account_id},
        )
    return int(total or 0)


async def test_one_instance_per_run(clean_db: AsyncEngine) -> None:
    ran: list[int] = []

    async def slow(connection: AsyncConnection) -> None:
        ran.append(1)
        await asyncio.sleep(0.3)

    job = Job("exclusive-test", None, slow)
    outcomes = await asyncio.gather(*(run_job(clean_db, job) for _ in range(3)))
    assert sorted(outcomes) == [False, False, True] and ran == [1]
    assert await run_job(clean_db, job)  # the lock went with the transaction
    assert lock_key("a") != lock_key("b") and lock_key("a") == lock_key("a")


async def test_a_run_of_units_of_work_is_exclusive_and_holds_no_transaction_open(
    clean_db: AsyncEngine,
) -> None:
    # Billing jobs open a unit of work per item; the lock of their run must not be a
    # transaction left open (it would hold back the rollup horizon and invoice cutoffs).
    ran: list[int] = []
    seen: list[int] = []

    async def items() -> None:
        ran.append(1)
        async with clean_db.connect() as connection:
            open_elsewhere = await connection.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND pid <> pg_backend_pid() AND xact_start IS NOT NULL"
                    " AND query ILIKE '%advisory%'"
                )
            )
        seen.append(int(open_elsewhere or 0))
        await asyncio.sleep(0.3)

    job = Job("items-test", None, items=items)
    outcomes = await asyncio.gather(*(run_job(clean_db, job) for _ in range(3)))
    assert sorted(outcomes) == [False, False, True] and ran == [1]
    assert seen == [0]
    assert await run_job(clean_db, job)  # released at the end of the run


async def test_watermark_never_passes_an_open_transaction(clean_db: AsyncEngine) -> None:
    """An event whose transaction started before a rollup run but commits after it is neither
    lost nor counted twice: the watermark stops at that transaction's start."""
    account_id = await _account(clean_db)
    event = usage_event(account_id, "0.25", time=datetime(2025, 3, 1, tzinfo=UTC))
    async with clean_db.connect() as writer:
        await writer.begin()
        await _settle(writer, event)  # stamped ingested_at = this transaction's start
        run = await roll_up_now(clean_db, catch_up=False)
        assert run.events == 0
        await writer.commit()
    assert await _folded(clean_db, account_id) == 0
    run = await roll_up_now(clean_db)
    assert run.events == 1 and await _folded(clean_db, account_id) == 1
    assert (await roll_up_now(clean_db)).events == 0  # idempotent: nothing twice


async def test_a_backlog_is_caught_up_in_bounded_runs(clean_db: AsyncEngine) -> None:
    """Each run folds about `max_events` events (up to the transaction holding the next one
    past the watermark's) and commits; the job repeats runs until it is caught up, never
    splitting the events of one transaction between runs."""
    account_id = await _account(clean_db, "100")
    for _ in range(5):  # five transactions of 7 events, each with its own ingested_at
        async with clean_db.begin() as connection:
            for _ in range(7):
                await _settle(
                    connection,
                    usage_event(account_id, "0.01", time=datetime(2025, 3, 1, tzinfo=UTC)),
                )
    runs: list[rollups.RollupRun] = []

    async def body(connection: AsyncConnection) -> rollups.RollupRun:
        runs.append(await roll_up(connection, lag_seconds=0, max_events=10))
        return runs[-1]

    assert await run_job(clean_db, Job("usage_rollups", None, body, again=rollups.behind))
    assert [run.events for run in runs] == [7, 14, 14] and runs[-1].caught_up
    assert [run.caught_up for run in runs[:-1]] == [False, False]
    assert [run.since for run in runs[1:]] == [run.until for run in runs[:-1]]
    assert await _folded(clean_db, account_id) == 35


async def test_rollup_lag_keeps_the_newest_events_raw(clean_db: AsyncEngine) -> None:
    account_id = await _account(clean_db)
    async with clean_db.begin() as connection:
        await _settle(
            connection, usage_event(account_id, "0.25", time=datetime(2025, 3, 1, tzinfo=UTC))
        )
    async with clean_db.begin() as connection:
        run = await roll_up(connection, lag_seconds=3600)
    assert run.events == 0 and await _folded(clean_db, account_id) == 0


async def test_scheduler_runs_jobs_and_closes(clean_db: AsyncEngine) -> None:
    ran = asyncio.Event()

    async def body(connection: AsyncConnection) -> None:
        await connection.execute(text("SELECT 1"))
        ran.set()

    async def broken(connection: AsyncConnection) -> None:
        raise RuntimeError("boom")

    scheduler = Scheduler(
        clean_db,
        [
            Job("tick", IntervalTrigger(minutes=5), body, at_start=True),
            Job("broken", IntervalTrigger(minutes=5), broken, at_start=True),
        ],
    )
    scheduler.start()
    try:
        await asyncio.wait_for(ran.wait(), timeout=10)
    finally:
        await scheduler.close()
    assert {job.name for job in default_jobs()} >= {
        "usage_rollups",
        "usage_partitions",
        "reconciliation",
    }


async def test_partition_maintenance(clean_db: AsyncEngine) -> None:
    assert months_from(date(2026, 11, 23), 2) == [
        date(2026, 11, 1),
        date(2026, 12, 1),
        date(2027, 1, 1),
    ]
    async with clean_db.begin() as connection:
        made = await maintain_partitions(connection, date(2031, 12, 5))
    assert made[-1] == date(2032, 2, 1)
    async with clean_db.connect() as connection:
        for name in ("usage_events_2031_12", "usage_events_2032_01", "usage_events_2032_02"):
            assert await connection.scalar(text("SELECT to_regclass(:n)"), {"n": name}) == name
        for name in ("usage_events_2031_12", "usage_events_2032_01", "usage_events_2032_02"):
            await connection.execute(text(f"DROP TABLE {name}"))
        await connection.commit()


async def test_concurrent_callers_make_a_missing_partition_once(clean_db: AsyncEngine) -> None:
    """Ingestions, the writer and the maintenance job may all reach for the same new month at
    once: the ones that waited for the first must find its partition, not fail creating it."""
    month = date(2033, 7, 1)
    ready = asyncio.Barrier(4)

    async def ensure() -> None:
        async with clean_db.connect() as connection:
            await connection.execute(text("SELECT 1"))  # a warm catalog cache, as a pooled one
            await ready.wait()
            await metering.ensure_partition(connection, month)
            await connection.commit()

    try:
        for _ in range(3):  # the race needs the callers to meet; give it a few chances
            await asyncio.gather(*(ensure() for _ in range(4)))
            async with clean_db.begin() as connection:
                await connection.execute(text("DROP TABLE usage_events_2033_07"))
    finally:
        async with clean_db.begin() as connection:
            await connection.execute(text("DROP TABLE IF EXISTS usage_events_2033_07"))


def _gauge() -> float | None:
    return REGISTRY.get_sample_value("tollgate_reconciliation_mismatches")


async def test_reconciliation_finds_and_reports_mismatches(
    clean_db: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    healthy = await _account(clean_db)
    broken = await _account(clean_db)
    async with clean_db.begin() as connection:
        for account_id in (healthy, broken):
            await _settle(
                connection, usage_event(account_id, "0.25", time=datetime(2025, 3, 1, tzinfo=UTC))
            )
    async with clean_db.begin() as connection:
        report = await reconciliation.reconcile(connection)
    assert (report.accounts, report.mismatches) == (2, [])
    assert _gauge() == 0
    # Money that appears outside the ledger, and an event whose cost was changed afterwards.
    async with clean_db.begin() as connection:
        await connection.execute(
            text("UPDATE accounts SET balance = balance + 1 WHERE id = :a"), {"a": broken}
        )
        await connection.execute(
            text("UPDATE usage_events SET cost = 0.5 WHERE account_id = :a"), {"a": broken}
        )
    assert await run_job(clean_db, next(j for j in default_jobs() if j.name == "reconciliation"))
    assert _gauge() == 1
    assert f"reconciliation mismatch on account {broken}" in caplog.text
    async with clean_db.connect() as connection:
        stored = await connection.scalar(
            text("SELECT result FROM job_state WHERE name = 'reconciliation'")
        )
    assert stored["mismatches"] == 1
    assert stored["details"][0]["account_id"] == str(broken)
    assert stored["details"][0]["failed"] == [
        "balance = sum(ledger)",
        "total_usage = sum(event costs)",
    ]
    # Another instance's gauge follows the stored result.
    reconciliation.MISMATCHES.set(0)
    async with clean_db.connect() as connection:
        await reconciliation.refresh_gauge(connection)
    assert _gauge() == 1


def test_reconcile_command(database_url: str, clean_db: AsyncEngine) -> None:
    runner = CliRunner()
    result = runner.invoke(reconcile_command, ["--json"], env={"DATABASE_URL": database_url})
    assert result.exit_code == 0, result.output
    assert '"mismatches": 0' in result.output
    result = runner.invoke(reconcile_command, [], env={"DATABASE_URL": database_url})
    assert result.exit_code == 0 and "0 mismatched" in result.output
