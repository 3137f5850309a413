"""The usage writer: group commit of settlements.

Requests hand their settlement to the writer and wait for the commit that contains it. While
one batch is being written, new settlements queue up and go together in the next, so under
load many requests share one durable commit, and alone a request pays for one commit only.
A failed batch is retried: the write is idempotent, so a retry never charges twice.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from collections.abc import Callable, Sequence
from datetime import date

from prometheus_client import Counter, Histogram
from sqlalchemy.ext.asyncio import AsyncEngine

from app.credits.repository import SETTLEMENT_FAILED, SETTLEMENT_REFUSED, SettlementConnection
from app.db.engine import driver_dsn
from app.metering import repository
from app.metering.schemas import Settlement

logger = logging.getLogger(__name__)

RETRY_DELAYS = (0.05, 0.2, 1.0, 2.0, 5.0)

COMMITS = Counter("tollgate_usage_commits", "Usage writer commits")
SETTLEMENTS = Counter("tollgate_usage_settlements", "Settlements committed by the usage writer")
BATCH_SIZE = Histogram(
    "tollgate_usage_batch_size",
    "Settlements per commit",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 512),
)


class WriterClosed(RuntimeError):
    pass


class UsageWriter:
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        max_batch: int = 1000,
        on_commit: Callable[[set[uuid.UUID]], None] | None = None,
    ) -> None:
        self._max_batch = max_batch
        # Told which accounts were charged by each commit (auto-recharge watches balances).
        self._on_commit = on_commit
        # One connection of its own: batches are written one at a time, each as a single
        # statement, atomic on its own.
        self._connection = SettlementConnection(driver_dsn(engine))
        self._queue: asyncio.Queue[tuple[Settlement, asyncio.Future[None]]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._months: set[date] = set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="usage-writer")

    async def settle(self, settlement: Settlement) -> None:
        """Returns once the settlement is committed (durably)."""
        if self._closed:
            raise WriterClosed("the usage writer is shut down")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((settlement, future))
        await asyncio.shield(future)

    async def close(self) -> None:
        """Write everything queued, then stop."""
        self._closed = True
        await self._queue.join()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._connection.close()

    async def _run(self) -> None:
        while True:
            first = await self._queue.get()
            batch = [first]
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            futures = [f for _, f in batch]
            try:
                await self._write([s for s, _ in batch], futures)
            except Exception as exc:
                # Never let the writer's task end: every later settlement would wait forever.
                logger.exception("usage writer: unexpected failure of a batch")
                self._connection.drop()
                _resolve(futures, exc)
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _write(
        self, settlements: Sequence[Settlement], futures: Sequence[asyncio.Future[None]]
    ) -> None:
        for attempt, delay in enumerate((*RETRY_DELAYS, None)):
            if attempt == 1:
                # The failed attempt may have committed: a lease part taken again would shrink
                # its lease twice. Without it, at worst the lease keeps a part it no longer
                # needs, given back with the lease (the owner's book counts it as taken).
                settlements = [without_lease_part(s) for s in settlements]
            try:
                await self._commit(settlements)
            except SETTLEMENT_REFUSED as exc:
                # Not transient (an account deleted mid-request, a value Postgres cannot
                # store): isolate the bad one, so the others of its batch still commit.
                if len(settlements) > 1:
                    for settlement, future in zip(settlements, futures, strict=True):
                        await self._write([settlement], [future])
                    return
                logger.error(
                    "usage settlement refused by the database: %r (%s)", settlements[0], exc
                )
                _resolve(futures, exc)
                return
            except SETTLEMENT_FAILED as exc:
                self._connection.drop()
                if delay is None:
                    logger.error("usage writer gave up after %d attempts: %s", attempt + 1, exc)
                    _resolve(futures, exc)
                    return
                logger.warning("usage write failed (attempt %d), retrying: %s", attempt + 1, exc)
                await asyncio.sleep(delay)
            else:
                COMMITS.inc()
                SETTLEMENTS.inc(len(settlements))
                BATCH_SIZE.observe(len(settlements))
                _resolve(futures, None)
                if self._on_commit is not None:
                    charged = {s.account_id for s in settlements if s.event is not None}
                    try:
                        self._on_commit(charged)
                    except Exception:
                        logger.exception("usage commit hook failed")
                return

    async def _commit(self, settlements: Sequence[Settlement]) -> None:
        months = {s.event.month for s in settlements if s.event is not None} - self._months
        for month in sorted(months):
            await self._connection.run(repository.ENSURE_PARTITION, month)
        self._months |= months
        await self._connection.settle(settlements)


def without_lease_part(settlement: Settlement) -> Settlement:
    if settlement.lease_part is None:
        return settlement
    return dataclasses.replace(settlement, hold_id=None, lease_part=None)


def _resolve(futures: Sequence[asyncio.Future[None]], error: BaseException | None) -> None:
    for future in futures:
        if future.done():
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)
