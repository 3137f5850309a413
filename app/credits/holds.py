"""Credit holds for requests in flight (SPEC 7).

A hold is placed before forwarding and released by the request's settlement, in the same
transaction as its usage event. This process renews the lease of the holds it owns; a hold
whose owner died stops being renewed, expires, and is swept by any instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import uuid
from datetime import UTC, datetime
from decimal import Decimal

import asyncpg
from prometheus_client import Counter, Histogram
from sqlalchemy.ext.asyncio import AsyncEngine

from app.credits import repository
from app.credits.repository import HoldOutcome, WantedHold
from app.db.engine import create_driver_pool
from app.errors import InvalidApiKey

logger = logging.getLogger(__name__)

LEASE_SECONDS = 60.0

HOLD_BATCH = Histogram(
    "tollgate_hold_batch_size",
    "Credit holds placed per statement",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)

# Requests whose actual cost exceeded their hold: SPEC 7 bounds an overdraft by these amounts,
# so an operator watches them to see when the bound is strained.
HOLD_SHORTFALLS = Counter(
    "tollgate_hold_shortfall", "Requests whose actual cost exceeded their credit hold"
)
HOLD_SHORTFALL_AMOUNT = Counter(
    "tollgate_hold_shortfall_amount",
    "Sum of the amounts by which actual costs exceeded their credit holds",
    ["currency"],
)


def record_shortfall(request_id: str, held: Decimal, cost: Decimal, currency: str) -> None:
    HOLD_SHORTFALLS.inc()
    HOLD_SHORTFALL_AMOUNT.labels(currency).inc(float(cost - held))
    logger.warning(
        "request %s cost %s %s, more than its hold of %s", request_id, cost, currency, held
    )


# A hold asked for, and where its outcome goes (None: no such account).
_Wanted = tuple[WantedHold, "asyncio.Future[HoldOutcome | None]"]


class HoldKeeper:
    def __init__(
        self, engine: AsyncEngine, *, lease_seconds: float = LEASE_SECONDS, pool_size: int = 10
    ) -> None:
        self._engine = engine
        self._pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self._opening = asyncio.Lock()
        self._lease = lease_seconds
        self._live: dict[uuid.UUID, uuid.UUID] = {}  # hold id → account id
        self._waiting: list[_Wanted] = []
        self._placer: asyncio.Task[None] | None = None
        self._task: asyncio.Task[None] | None = None

    async def place(
        self,
        account_id: uuid.UUID,
        amount: Decimal,
        *,
        at: datetime | None = None,
        api_key_id: uuid.UUID | None = None,
        user: str | None = None,
    ) -> HoldOutcome:
        """Hold `amount` if the account's available credit and the spend limits of the key
        and the end user cover it (see `outcome.granted`), for a request of time `at`.
        Holds asked for while a statement runs go together in the next one, as settlements
        do: one round trip and one pool checkout for many requests under load."""
        future: asyncio.Future[HoldOutcome | None] = asyncio.get_running_loop().create_future()
        at = at or datetime.now(UTC)
        wanted = WantedHold(account_id, uuid.uuid4(), amount, api_key_id, user, at)
        self._waiting.append((wanted, future))
        if self._placer is None or self._placer.done():
            self._placer = asyncio.create_task(self._place_waiting(), name="hold-placer")
        outcome = await asyncio.shield(future)
        if outcome is None:
            raise InvalidApiKey("The account of this API key no longer exists.")
        if outcome.granted:
            self._live[outcome.hold_id] = account_id
        return outcome

    async def _place_waiting(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting, []
            HOLD_BATCH.observe(len(batch))
            try:
                async with (await self._driver()).acquire() as driver:
                    await self._place_batch(driver, batch)
            except BaseException as exc:
                # Every request waiting on this batch gets an answer, also on shutdown.
                failure = exc if isinstance(exc, Exception) else RuntimeError("shutting down")
                for _, future in batch:
                    if not future.done():
                        future.set_exception(failure)
                if not isinstance(exc, Exception):
                    raise

    async def _place_batch(self, driver: asyncpg.Connection, batch: list[_Wanted]) -> None:
        if len(batch) > 1:
            # One statement, in the order settlements lock accounts; an account whose credit
            # does not cover all its holds gets none, and they are placed one by one below.
            batch.sort(key=lambda wanted: wanted[0].account_id.int)
            try:
                accounts = await self._statement(driver, [hold for hold, _ in batch])
            except asyncpg.DeadlockDetectedError:
                # Rolled back whole (e.g. by a sweep locking accounts in another order); holds
                # placed one by one lock one account each and cannot deadlock.
                accounts = {}
            rest = []
            for wanted in batch:
                hold, future = wanted
                outcome = accounts.get(hold.account_id)
                if outcome is not None and outcome.granted:
                    future.set_result(dataclasses.replace(outcome, hold_id=hold.hold_id))
                else:  # not covered, or not known here: alone, the statement decides
                    rest.append(wanted)
            batch = rest
        for hold, future in batch:
            outcome = (await self._statement(driver, [hold])).get(hold.account_id)
            if outcome is not None and outcome.unseen:
                # A limit's counter was being made meanwhile; now it is there to be seen.
                outcome = (await self._statement(driver, [hold])).get(hold.account_id)
            future.set_result(outcome)

    async def _statement(
        self, driver: asyncpg.Connection, holds: list[WantedHold]
    ) -> dict[uuid.UUID, HoldOutcome]:
        return await repository.place_holds(driver, holds, lease_seconds=self._lease)

    def forget(self, hold_id: uuid.UUID) -> None:
        """The hold was released by its settlement: stop renewing it."""
        self._live.pop(hold_id, None)

    def start(self) -> None:
        # Renewing four times per lease survives a few slow or failed rounds.
        self._task = asyncio.create_task(self._maintain(self._lease / 4), name="hold-keeper")

    async def close(self) -> None:
        if self._placer is not None:
            await asyncio.gather(self._placer, return_exceptions=True)  # holds in flight
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def _driver(self) -> asyncpg.Pool:
        if self._pool is None:
            async with self._opening:
                if self._pool is None:
                    self._pool = await create_driver_pool(self._engine, size=self._pool_size)
        return self._pool

    async def maintain_once(self) -> int:
        """Renew this process's holds, then sweep expired ones; returns how many accounts had
        holds swept."""
        async with (await self._driver()).acquire() as driver:
            live = [(account_id, hold_id) for hold_id, account_id in self._live.items()]
            if live:
                await repository.renew_holds(driver, live, self._lease)
            return await repository.sweep_expired_holds(driver)

    async def _maintain(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                swept = await self.maintain_once()
                if swept:
                    logger.warning("released expired holds of %d accounts", swept)
            except Exception:
                logger.exception("hold maintenance failed; retrying")
