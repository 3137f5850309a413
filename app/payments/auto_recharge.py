"""Auto-recharge: when an account's balance falls below its threshold, charge the saved card
off-session.

Guards, all in the database so they hold across processes:
- at most one attempt in flight per account (unique partial index on pending attempts);
- at most `recharge_max_per_hour` attempts per account per hour (counted under the settings
  row lock);
- after a decline, a back-off that doubles per consecutive decline.

The decision and the pending attempt commit before Stripe is called; Stripe is called with an
idempotency key per attempt, so a retried call never charges twice; the credit goes through the
same function as the `payment_intent.succeeded` webhook, under the same ledger reference.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import stripe
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db.engine import unit_of_work
from app.db.models import RechargeAttempt
from app.payments import recharge, repository, webhook
from app.payments.config import BillingConfig
from app.payments.events import Outcome
from app.payments.recharge import RechargePlan
from app.payments.stripe_api import StripeGateway

logger = logging.getLogger(__name__)

# Stripe refuses these for good: retrying the same request cannot succeed.
FINAL_ERRORS = (
    stripe.CardError,
    stripe.InvalidRequestError,
    stripe.AuthenticationError,
    stripe.PermissionError,
)
# Stripe's idempotency keys live 24 hours; an attempt older than that cannot be resumed safely.
ABANDON_AFTER = timedelta(hours=23)


class AutoRecharger:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        stripe_gateway: StripeGateway | None,
        config: BillingConfig,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._stripe = stripe_gateway
        self._config = config
        self._dirty: set[uuid.UUID] = set()
        self._drainer: asyncio.Task[None] | None = None

    async def maybe_recharge(self, account_id: uuid.UUID) -> Outcome | None:
        """Charge the account now if its settings say so; the outcome, or None when there was
        nothing to do. Safe to call from any number of tasks and processes at once."""
        if self._stripe is None:
            return None
        async with unit_of_work(self._sessionmaker) as session:
            plan = await recharge.plan_recharge(session, account_id, self._config)
        if plan is None:
            return None
        return await self._charge(plan)

    async def maybe_recharge_logged(self, account_id: uuid.UUID) -> None:
        """`maybe_recharge` for background tasks: failures are logged, never raised."""
        try:
            await self.maybe_recharge(account_id)
        except Exception:
            logger.exception("auto-recharge of account %s failed", account_id)

    def notify(self, account_ids: Iterable[uuid.UUID]) -> None:
        """Non-blocking: check these accounts (whose balance just went down) in the background.
        Meant for the settlement path; calls while a check runs are coalesced into the next."""
        if self._stripe is None:
            return
        self._dirty.update(account_ids)
        if self._dirty and (self._drainer is None or self._drainer.done()):
            self._drainer = asyncio.create_task(self._drain(), name="auto-recharge")

    async def run_due(self) -> int:
        """Job body (every minute): recharge every account that is due, and resume attempts
        left without an outcome (a crash between deciding and charging, a lost webhook).
        Returns how many charges were made or resumed."""
        if self._stripe is None:
            return 0
        done = 0
        async with unit_of_work(self._sessionmaker) as session:
            due = await repository.accounts_due_for_recharge(session)
            stale = await repository.stale_attempts(
                session, older_than=self._config.recharge_stale_after
            )
        for attempt in stale:
            try:
                await self._resume(attempt)
                done += 1
            except Exception:
                logger.exception("auto-recharge attempt %s could not be resumed", attempt.id)
        for account_id in due:
            try:
                if await self.maybe_recharge(account_id) is not None:
                    done += 1
            except Exception:
                logger.exception("auto-recharge of account %s failed", account_id)
        return done

    async def close(self) -> None:
        if self._drainer is not None:
            await asyncio.gather(self._drainer, return_exceptions=True)

    async def _drain(self) -> None:
        while self._dirty:
            batch, self._dirty = list(self._dirty), set()
            try:
                async with unit_of_work(self._sessionmaker) as session:
                    due = await repository.accounts_due_for_recharge(session, batch)
                for account_id in due:
                    await self.maybe_recharge(account_id)
            except Exception:
                # The periodic job picks up whatever this missed.
                logger.exception("auto-recharge check failed")

    async def _charge(self, plan: RechargePlan) -> Outcome:
        assert self._stripe is not None
        try:
            intent = await self._stripe.charge_off_session(
                account_id=str(plan.account_id),
                attempt_id=str(plan.attempt_id),
                customer_id=plan.customer_id,
                payment_method_id=plan.payment_method_id,
                amount_minor=plan.amount_minor,
                currency=plan.currency,
                idempotency_key=plan.idempotency_key,
            )
        except FINAL_ERRORS as exc:
            return await self._record_decline(plan.account_id, plan.attempt_id, exc)
        except stripe.StripeError as exc:
            # Network trouble or a Stripe outage: the charge may or may not exist. The attempt
            # stays pending and is resumed later with the same idempotency key.
            logger.warning("auto-recharge %s: Stripe unavailable: %s", plan.attempt_id, exc)
            async with unit_of_work(self._sessionmaker) as session:
                await repository.set_attempt_intent(
                    session,
                    account_id=plan.account_id,
                    attempt_id=plan.attempt_id,
                    payment_intent_id=None,
                    error=str(exc)[:2000],
                )
            return Outcome.PENDING
        async with unit_of_work(self._sessionmaker) as session:
            return await recharge.apply_recharge_intent(
                session, plan.account_id, plan.attempt_id, intent, self._config
            )

    async def _record_decline(
        self, account_id: uuid.UUID, attempt_id: uuid.UUID, exc: stripe.StripeError
    ) -> Outcome:
        intent = getattr(exc.error, "payment_intent", None) if exc.error else None
        payment_intent_id = getattr(intent, "id", None) if intent is not None else None
        logger.info("auto-recharge %s declined: %s", attempt_id, exc.user_message or exc)
        async with unit_of_work(self._sessionmaker) as session:
            return await webhook.fail_recharge(
                session,
                account_id=account_id,
                attempt_id=attempt_id,
                payment_intent_id=payment_intent_id,
                reason=str(exc.user_message or exc.code or exc)[:2000],
                config=self._config,
            )

    async def _resume(self, attempt: RechargeAttempt) -> None:
        if attempt.payment_intent_id is not None:
            assert self._stripe is not None
            intent = await self._stripe.retrieve_payment_intent(attempt.payment_intent_id)
            async with unit_of_work(self._sessionmaker) as session:
                await recharge.apply_recharge_intent(
                    session, attempt.account_id, attempt.id, intent, self._config
                )
            return
        if datetime.now(UTC) - attempt.created_at > ABANDON_AFTER:
            async with unit_of_work(self._sessionmaker) as session:
                await webhook.fail_recharge(
                    session,
                    account_id=attempt.account_id,
                    attempt_id=attempt.id,
                    payment_intent_id=None,
                    reason="abandoned: no answer from Stripe",
                    config=self._config,
                )
            return
        # The same request under the same idempotency key: Stripe replays the first charge if
        # it was made, and makes it otherwise.
        await self._charge(
            RechargePlan(
                account_id=attempt.account_id,
                attempt_id=attempt.id,
                amount=attempt.amount,
                currency=attempt.currency,
                customer_id=attempt.customer_id,
                payment_method_id=attempt.payment_method_id,
            )
        )


async def maybe_auto_recharge(
    sessionmaker: async_sessionmaker[AsyncSession],
    account_id: uuid.UUID,
    stripe_gateway: StripeGateway | None,
    config: BillingConfig,
) -> Outcome | None:
    """One-off form of `AutoRecharger.maybe_recharge`: one indexed read when there is nothing
    to do. In the app, prefer `payments.runtime.auto_recharger(state)`, whose `notify` does
    the check in the background for a whole batch of accounts."""
    return await AutoRecharger(sessionmaker, stripe_gateway, config).maybe_recharge(account_id)
