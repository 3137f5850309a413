"""Credit holds for requests in flight (SPEC 7).

A hold is placed before forwarding and released by the request's settlement, in the same
transaction as its usage event. This process renews the lease of the holds it owns; a hold
whose owner died stops being renewed, expires, and is swept by any instance. The holds of an
account this process serves often are granted in memory from a credit lease (leases.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg
from prometheus_client import Counter, Histogram
from sqlalchemy.ext.asyncio import AsyncEngine

from app.credits import repository
from app.credits.leases import LEASE_REQUESTS, LEASE_SHARE, Lease, LeaseBook
from app.credits.limits import LimitRefusal
from app.credits.repository import HoldOutcome, WantedHold
from app.db.engine import create_driver_pool, driver_dsn
from app.errors import InvalidApiKey

logger = logging.getLogger(__name__)

LEASE_SECONDS = 60.0
ACCOUNTS_CHANNEL = "tollgate_accounts"  # notified when an account's terms change (0013)
JANITOR_SECONDS = 0.5
HEARTBEAT_EVERY = 4  # janitor rounds: the listening connection is checked every 2 s
HEARTBEAT_TIMEOUT = 1.0

LEASES_GRANTED = Counter("tollgate_lease_grants", "Credit holds granted from a credit lease")
LEASE_STATEMENTS = Counter(
    "tollgate_lease_statements", "Statements that took, extended or gave back a credit lease"
)

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
        self,
        engine: AsyncEngine,
        *,
        lease_seconds: float = LEASE_SECONDS,
        pool_size: int = 10,
        lease_requests: int = LEASE_REQUESTS,
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
        # Credit leases (0 requests: none). Granted from only while this process hears of
        # every change of the accounts' terms (its LISTEN connection is up).
        self._lease_requests = lease_requests
        self.leases = LeaseBook()
        self._listener: asyncpg.Connection | None = None
        self._janitor: asyncio.Task[None] | None = None
        self._lease_tasks: set[asyncio.Task[None]] = set()
        self._taking: set[uuid.UUID] = set()
        # Notices heard, counted, and each account's last: a lease whose statement ran before
        # a change whose notice came before the statement's answer must not be used.
        self._notices = 0
        self._noticed: dict[uuid.UUID, int] = {}
        self._forgotten = 0  # the count of notices when `_noticed` was last cleared

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
        From this process's lease of the account when it has one that covers it; otherwise
        holds asked for while a statement runs go together in the next one, as settlements
        do: one round trip and one pool checkout for many requests under load."""
        now = time.monotonic()
        lease = self.leases.grant(account_id, amount, api_key_id, user, now)
        if lease is not None:
            LEASES_GRANTED.inc()
            if lease.wants_more():
                self._extend(lease)
            return HoldOutcome(
                hold_id=lease.lease_id,
                granted=True,
                available=lease.free + amount,
                total_purchased=lease.terms.total_purchased,
                total_usage=lease.terms.total_usage,
                lease=lease,
            )
        outcome = await self._place(account_id, amount, at, api_key_id, user)
        if outcome.granted:
            self._live[outcome.hold_id] = account_id
            if self.leasing and self.leases.hold_placed(account_id, now):
                self._take(account_id, amount)
        elif outcome.refusal is LimitRefusal.CREDIT and await self._give_back(account_id):
            # Part of what was missing was this process's own lease: asked again without it.
            outcome = await self._place(account_id, amount, at, api_key_id, user)
            if outcome.granted:
                self._live[outcome.hold_id] = account_id
        return outcome

    async def _place(
        self,
        account_id: uuid.UUID,
        amount: Decimal,
        at: datetime | None,
        api_key_id: uuid.UUID | None,
        user: str | None,
    ) -> HoldOutcome:
        future: asyncio.Future[HoldOutcome | None] = asyncio.get_running_loop().create_future()
        at = at or datetime.now(UTC)
        wanted = WantedHold(account_id, uuid.uuid4(), amount, api_key_id, user, at)
        self._waiting.append((wanted, future))
        if self._placer is None or self._placer.done():
            self._placer = asyncio.create_task(self._place_waiting(), name="hold-placer")
        outcome = await asyncio.shield(future)
        if outcome is None:
            raise InvalidApiKey("The account of this API key no longer exists.")
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

    def settled(
        self, hold_id: uuid.UUID, lease: Lease | None, part: Decimal, committed: bool
    ) -> None:
        """The request of this hold settled (`committed`: its settlement committed, else it
        failed): stop renewing the hold, or take its part out of the lease it came from."""
        if lease is not None:
            self.leases.settled(lease, part, committed)
        else:
            self._live.pop(hold_id, None)

    def start(self) -> None:
        # Renewing four times per lease survives a few slow or failed rounds.
        self._task = asyncio.create_task(self._maintain(self._lease / 4), name="hold-keeper")
        if self._lease_requests > 0:
            self._janitor = asyncio.create_task(self._tend_leases(), name="lease-janitor")

    async def close(self) -> None:
        """After the usage writer has closed: every request has settled."""
        if self._placer is not None:
            await asyncio.gather(self._placer, return_exceptions=True)  # holds in flight
        for task in (self._task, self._janitor):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._lease_tasks:
            await asyncio.gather(*self._lease_tasks, return_exceptions=True)
        self.leases.retire_all()
        try:
            await self._return_leases()
        except Exception:  # swept after the hold lease time instead
            logger.exception("could not give back credit leases on shutdown")
        if self._listener is not None:
            await self._listener.close()
            self._listener = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    # ── Credit leases ──────────────────────────────────────────────────────────────────────

    @property
    def leasing(self) -> bool:
        """Whether holds may be granted from leases now (this process hears of changes)."""
        return (
            self._lease_requests > 0
            and self._listener is not None
            and not self._listener.is_closed()
        )

    def _spawn(self, work: Any) -> None:
        task = asyncio.create_task(work, name="credit-lease")
        self._lease_tasks.add(task)
        task.add_done_callback(self._lease_tasks.discard)

    def _take(self, account_id: uuid.UUID, amount: Decimal) -> None:
        if account_id not in self._taking:
            self._taking.add(account_id)
            self._spawn(self._take_lease(account_id, amount * self._lease_requests))

    def _extend(self, lease: Lease) -> None:
        lease.extending = True
        self._spawn(self._extend_lease(lease))

    async def _take_lease(self, account_id: uuid.UUID, target: Decimal) -> None:
        lease_id = uuid.uuid4()
        try:
            sent, notices = time.monotonic(), self._notices
            terms = await self._lease_statement(account_id, lease_id, target, new=True)
            if terms is None or terms.added <= 0:
                return
            lease = Lease(
                account_id,
                lease_id,
                Decimal(0),
                target,
                0.0,
                terms,
                last_grant=time.monotonic(),
            )
            self.leases.extended(lease, terms, self._valid_until(sent))
            # Not used when its terms may be stale: the account changed since the statement
            # was sent, or this process stopped listening meanwhile.
            stale = (
                self._noticed.get(account_id, 0) > notices
                or notices < self._forgotten
                or not self.leasing
            )
            self.leases.add(lease)
            if stale or terms.suspended:
                self.leases.retire(account_id)
        except Exception:
            logger.exception("could not take a credit lease of account %s", account_id)
        finally:
            self._taking.discard(account_id)

    async def _extend_lease(self, lease: Lease) -> None:
        try:
            sent = time.monotonic()
            terms = await self._lease_statement(
                lease.account_id, lease.lease_id, lease.target - lease.free, new=False
            )
            if terms is None:  # its row is gone (swept, or given back meanwhile)
                self.leases.retire_lease(lease)
            else:
                self.leases.extended(lease, terms, self._valid_until(sent))
        except Exception:
            logger.exception("could not extend the credit lease of %s", lease.account_id)
        finally:
            lease.extending = False

    async def _lease_statement(
        self, account_id: uuid.UUID, lease_id: uuid.UUID, amount: Decimal, *, new: bool
    ) -> repository.LeaseTerms | None:
        LEASE_STATEMENTS.inc()
        async with (await self._driver()).acquire() as driver:
            return await repository.extend_lease(
                driver,
                account_id,
                lease_id,
                amount,
                new=new,
                share=LEASE_SHARE,
                lease_seconds=self._lease,
            )

    def _valid_until(self, sent: float) -> float:
        # The row expires `lease` seconds after the statement ran, which is after `sent`; a
        # margin for the clocks' drift keeps grants strictly inside its life.
        return sent + self._lease * 0.9

    async def _give_back(self, account_id: uuid.UUID) -> bool:
        """Retire the account's lease here; True when what it had free went back now (the
        whole lease, or its free part while its requests run)."""
        lease = self.leases.retire(account_id)
        if lease is None:
            return False
        if lease.requests:
            if lease.shrunk or lease.extending or lease.free <= 0:
                return False
            await self._shrink_lease(lease)
        else:
            await self._return_lease(lease)
        return True

    async def _return_lease(self, lease: Lease) -> None:
        LEASE_STATEMENTS.inc()
        async with (await self._driver()).acquire() as driver:
            await repository.return_lease(driver, lease.account_id, lease.lease_id)
        self.leases.returned(lease)

    async def _return_leases(self) -> None:
        for lease in self.leases.returnable():
            await self._return_lease(lease)
        for lease in self.leases.shrinkable():
            await self._shrink_lease(lease)

    async def _shrink_lease(self, lease: Lease) -> None:
        # No grant comes from a retired lease, and each settlement meanwhile lowers its amount
        # and what is in flight alike: the free part sent is still free when it arrives.
        lease.shrunk = True
        LEASE_STATEMENTS.inc()
        async with (await self._driver()).acquire() as driver:
            returned = await repository.shrink_lease(
                driver, lease.account_id, lease.lease_id, lease.free
            )
        lease.amount -= returned

    def _terms_changed(self, _: object, __: int, ___: str, payload: str) -> None:
        """A trigger's notice: the account's suspension, limits or tier changed."""
        with contextlib.suppress(ValueError):
            account_id = uuid.UUID(payload)
            self._notices += 1
            if len(self._noticed) > 10_000:  # forgotten: leases being taken are stale
                self._noticed.clear()
                self._forgotten = self._notices
            self._noticed[account_id] = self._notices
            self.leases.retire(account_id)

    def _deaf(self, _: object) -> None:
        # Changes made while not listening would go unheard: no lease is granted from, and
        # none whose statement ran before is used (as if every account had changed).
        self._notices += 1
        self._forgotten = self._notices
        self.leases.retire_all()

    async def _listen(self) -> None:
        listener = await asyncpg.connect(
            driver_dsn(self._engine), server_settings={"application_name": "tollgate-leases"}
        )
        try:
            await listener.add_listener(ACCOUNTS_CHANNEL, self._terms_changed)
        except BaseException:
            await listener.close()
            raise
        listener.add_termination_listener(self._deaf)
        self._listener = listener

    async def _heard(self) -> bool:
        """Whether the listening connection answers: a half-open one (a NAT's idle timeout, a
        failover without a reset) is closed, else its notices would be missed unnoticed."""
        assert self._listener is not None
        try:
            async with asyncio.timeout(HEARTBEAT_TIMEOUT):
                await self._listener.fetchval("SELECT 1")
        except Exception:
            self._listener.terminate()
            self._deaf(None)
            return False
        return True

    async def _tend_leases(self) -> None:
        beat = 0
        while True:
            try:
                beat += 1
                if self.leasing and beat % HEARTBEAT_EVERY == 0:
                    await self._heard()
                if not self.leasing:
                    self.leases.retire_all()
                    if self._listener is not None:
                        self._listener.terminate()
                        self._listener = None
                    await self._listen()
                self.leases.retire_idle(time.monotonic())
                await self._return_leases()
            except Exception:
                logger.exception("credit lease upkeep failed; retrying")
            await asyncio.sleep(JANITOR_SECONDS)

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
            leases = {lease.lease_id: lease for lease in self.leases.all()}
            live += [(lease.account_id, lease_id) for lease_id, lease in leases.items()]
            if live:
                sent = time.monotonic()
                renewed = await repository.renew_holds(driver, live, self._lease)
                for lease_id, lease in leases.items():
                    if lease_id in renewed:
                        lease.valid_until = max(lease.valid_until, self._valid_until(sent))
                    else:  # swept meanwhile (this process was cut off for a lease's time)
                        self.leases.retire_lease(lease)
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
