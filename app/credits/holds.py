"""Credit holds for requests in flight (SPEC 7).

A hold is placed before forwarding and released by the request's settlement, in the same
transaction as its usage event. This process renews the lease of the holds it owns; a hold
whose owner died stops being renewed, expires, and is swept by any instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from decimal import Decimal

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from app.credits import repository
from app.credits.repository import HoldOutcome
from app.db.engine import create_driver_pool
from app.errors import InvalidApiKey

logger = logging.getLogger(__name__)

LEASE_SECONDS = 60.0


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
        self._task: asyncio.Task[None] | None = None

    async def place(self, account_id: uuid.UUID, amount: Decimal) -> HoldOutcome:
        """Hold `amount` if the account's available credit covers it (see `outcome.granted`)."""
        hold_id = uuid.uuid4()
        # One statement per hold, outside a transaction block: no BEGIN/COMMIT round trips.
        async with (await self._driver()).acquire() as driver:
            outcome = await repository.place_hold(
                driver,
                account_id=account_id,
                hold_id=hold_id,
                amount=amount,
                lease_seconds=self._lease,
            )
        if outcome is None:
            raise InvalidApiKey("The account of this API key no longer exists.")
        if outcome.granted:
            self._live[hold_id] = account_id
        return outcome

    def forget(self, hold_id: uuid.UUID) -> None:
        """The hold was released by its settlement: stop renewing it."""
        self._live.pop(hold_id, None)

    def start(self) -> None:
        # Renewing four times per lease survives a few slow or failed rounds.
        self._task = asyncio.create_task(self._maintain(self._lease / 4), name="hold-keeper")

    async def close(self) -> None:
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
