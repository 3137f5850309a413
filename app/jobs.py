"""Scheduled jobs (SPEC 8): wiring only; job bodies live in their domains.

Every instance runs the same APScheduler `AsyncIOScheduler`. Each run of a job is a unit of
work (`app.db.engine.unit_of_work`) that first takes the job's advisory lock
(`app.db.job_state`): one instance does the work, the others skip that run. The body works in
that session, which commits when it returns. A job that needs a transaction per item (an
invoice per account, a charge per recharge) is given as `items`: it opens a unit of work per
item itself, under a session advisory lock held outside any transaction. Missed runs are
coalesced into one and never replayed; the bodies catch up from state in the database (e.g.
the rollup watermark) instead.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from litestar.datastructures import State
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.db import job_state
from app.db.engine import create_sessionmaker, unit_of_work
from app.db.job_state import JobName
from app.invoices.tasks import monthly_invoices_job
from app.payments.inbox import retry_unprocessed_events
from app.payments.runtime import auto_recharger, billing
from app.usage import reconciliation, rollups
from app.usage.partitions import maintain_partitions

logger = logging.getLogger(__name__)

JobBody = Callable[[AsyncSession], Awaitable[object]]
# A run that opens a unit of work per item itself.
ItemsBody = Callable[[], Awaitable[object]]
SHUTDOWN_GRACE_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class Job:
    name: JobName
    trigger: Any  # an APScheduler trigger
    body: JobBody | None = None  # works in the run's unit of work
    items: ItemsBody | None = None  # or: a unit of work per item, under a lock of its own
    exclusive: bool = True  # one instance per run, under the advisory lock
    at_start: bool = False  # also run once right after start
    # Given a run's result, whether to run again at once (a backlog caught up in steps, each
    # its own transaction).
    again: Callable[[object], bool] | None = None


async def _partitions(session: AsyncSession) -> object:
    return await maintain_partitions(session, datetime.now(UTC).date())


def default_jobs() -> list[Job]:
    return [
        Job(
            JobName.USAGE_ROLLUPS,
            IntervalTrigger(minutes=1),
            rollups.roll_up,
            at_start=True,
            again=rollups.behind,
        ),
        Job(JobName.USAGE_PARTITIONS, IntervalTrigger(hours=6), _partitions, at_start=True),
        Job(
            JobName.RECONCILIATION,
            CronTrigger(hour=3, minute=17, timezone=UTC),
            reconciliation.reconcile,
        ),
        # Read-only, on every instance: shows the last reconciliation in each one's metrics.
        Job(
            JobName.RECONCILIATION_GAUGE,
            IntervalTrigger(minutes=1),
            reconciliation.refresh_gauge,
            exclusive=False,
            at_start=True,
        ),
    ]


def billing_jobs(state: State) -> list[Job]:
    """Jobs of the billing domains. Each item is a unit of work of its own (a failed charge
    or invoice must not undo the others, and no transaction is open while Stripe is called)."""
    sessionmaker = state.sessionmaker

    async def invoices() -> object:
        return await monthly_invoices_job(sessionmaker, billing(state))

    async def recharges() -> object:
        return await auto_recharger(state).run_due()

    async def stripe_events() -> object:
        return await retry_unprocessed_events(sessionmaker, billing(state))

    return [
        Job(JobName.MONTHLY_INVOICES, IntervalTrigger(hours=1), items=invoices, at_start=True),
        Job(JobName.AUTO_RECHARGE, IntervalTrigger(minutes=1), items=recharges),
        Job(JobName.STRIPE_EVENT_RETRY, IntervalTrigger(minutes=5), items=stripe_events),
    ]


async def run_job(engine: AsyncEngine, job: Job) -> bool:
    """Run `job` now, as a unit of work that commits its work, and again while its `again`
    says so. False when another instance holds the job's lock (this run is skipped)."""
    sessionmaker = create_sessionmaker(engine)
    while True:
        if job.items is not None:
            async with job_state.held_outside_transactions(engine, job.name) as taken:
                if job.exclusive and not taken:
                    return False
                result = await job.items()
        else:
            assert job.body is not None
            async with unit_of_work(sessionmaker) as session:
                if job.exclusive and not await job_state.try_lock(session, job.name):
                    return False
                result = await job.body(session)
        logger.debug("job %s done: %s", job.name, result)
        if job.again is None or not job.again(result):
            return True


class Scheduler:
    """Start it in the app's lifespan (on every instance) and close it before the engine."""

    def __init__(self, engine: AsyncEngine, jobs: Sequence[Job] | None = None) -> None:
        self._engine = engine
        self._jobs = list(default_jobs() if jobs is None else jobs)
        self._scheduler = AsyncIOScheduler(
            timezone=UTC,
            # One run at a time per job; runs missed (loop busy, process paused) collapse into
            # one, and one later than the grace time is skipped: the next catches up.
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 30},
        )
        self._running: set[asyncio.Task[Any]] = set()

    def start(self) -> None:
        for job in self._jobs:
            self._scheduler.add_job(
                self._run,
                trigger=job.trigger,
                args=[job],
                id=job.name,
                name=job.name,
                **({"next_run_time": datetime.now(UTC)} if job.at_start else {}),
            )
        self._scheduler.start()

    async def close(self) -> None:
        """Stop scheduling; let runs in progress finish (briefly), then cancel them: a cancelled
        run rolls back and the next run, anywhere, redoes it."""
        if not self._scheduler.running:
            return
        # Paused first: shutting down would cancel the runs in progress straight away.
        self._scheduler.pause()
        running = set(self._running)
        if running:
            _, pending = await asyncio.wait(running, timeout=SHUTDOWN_GRACE_SECONDS)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        self._scheduler.shutdown(wait=False)

    async def _run(self, job: Job) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._running.add(task)
        try:
            await run_job(self._engine, job)
        except Exception:
            # Logged, never raised into the scheduler: the next run tries again.
            logger.exception("scheduled job %s failed", job.name)
        finally:
            if task is not None:
                self._running.discard(task)
