"""Auto-recharge rules: its settings, the decision to charge (under the settings row lock), and
what Stripe's answer to an off-session charge means. The runner that calls Stripe is
`auto_recharge`; the credit itself goes through the webhook's `credit_recharge_intent`. Never
commits.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import Account
from app.errors import InvalidRequest, ServiceUnavailable
from app.money import parse_money
from app.payments import repository
from app.payments.checkout import parse_topup_amount
from app.payments.config import BillingConfig
from app.payments.currency import to_minor
from app.payments.events import EventRefused, Fields, Outcome
from app.payments.schemas import auto_recharge_view
from app.payments.webhook import credit_recharge_intent, fail_recharge


async def auto_recharge(session: AsyncSession, account: Account) -> dict[str, Any]:
    """The account's settings, card and last attempt: `GET /v1/billing/auto_recharge` and the
    dashboard's page."""
    return auto_recharge_view(
        await repository.get_recharge_setting(session, account.id),
        await repository.get_customer(session, account.id),
        await repository.latest_attempt(session, account.id),
        account.currency,
    )


@dataclass(frozen=True, slots=True)
class RechargePlan:
    account_id: uuid.UUID
    attempt_id: uuid.UUID
    amount: Decimal
    currency: str
    customer_id: str
    payment_method_id: str

    @property
    def idempotency_key(self) -> str:
        return f"tollgate-recharge-{self.attempt_id}"

    @property
    def amount_minor(self) -> int:
        return to_minor(self.amount, self.currency)


async def save_auto_recharge(
    db: AsyncSession,
    account: Account,
    config: BillingConfig,
    *,
    enabled: bool,
    threshold: str | int | None,
    amount: str | int | None,
) -> None:
    """Auto-recharge settings, for the API and the dashboard alike: omitted values keep their
    saved ones; enabling needs both values, Stripe, and a card saved by a Checkout top-up."""
    existing = await repository.get_recharge_setting(db, account.id)
    new_threshold = existing.threshold if existing else None
    if threshold is not None:
        try:
            new_threshold = parse_money(threshold, field="threshold")
        except ValueError as exc:
            raise InvalidRequest(str(exc), param="threshold") from exc
        if new_threshold < 0:
            raise InvalidRequest("threshold must not be negative", param="threshold")
    new_amount = existing.amount if existing else None
    if amount is not None:
        new_amount = parse_topup_amount(amount, currency=account.currency, config=config)
    if enabled:
        if not config.stripe_enabled:
            raise ServiceUnavailable(
                "Auto-recharge is unavailable on this gateway: STRIPE_API_KEY is not set.",
                code="payments_not_configured",
            )
        if new_threshold is None or new_amount is None:
            missing = "threshold" if new_threshold is None else "amount"
            raise InvalidRequest(
                f"Missing required field: {missing} (needed to enable auto-recharge)",
                param=missing,
                code="missing_field",
            )
        customer = await repository.get_customer(db, account.id)
        if customer is None or customer.payment_method_id is None:
            raise InvalidRequest(
                "There is no saved card yet: top up once through Checkout, then enable "
                "auto-recharge.",
                param="enabled",
                code="payment_method_required",
            )
    await repository.upsert_recharge_setting(
        db,
        account_id=account.id,
        enabled=enabled,
        threshold=new_threshold if new_threshold is not None else Decimal(0),
        amount=new_amount if new_amount is not None else config.topup_min,
    )


async def plan_recharge(
    session: AsyncSession, account_id: uuid.UUID, config: BillingConfig
) -> RechargePlan | None:
    """Decide under the settings row lock whether to charge now, and if so record the pending
    attempt; None when there is nothing to do. The unique partial index on pending attempts is
    the last word: a second attempt in flight cannot be inserted."""
    candidate = await repository.lock_recharge_candidate(session, account_id)
    if (
        candidate is None
        or not candidate.enabled
        or candidate.balance >= candidate.threshold
        or candidate.in_backoff
        or candidate.pending
        or candidate.recent_attempts >= config.recharge_max_per_hour
        or candidate.customer_id is None
        or candidate.payment_method_id is None
    ):
        return None
    attempt_id = uuid.uuid4()
    if not await repository.insert_pending_attempt(
        session,
        account_id=account_id,
        attempt_id=attempt_id,
        amount=candidate.amount,
        currency=candidate.currency,
        customer_id=candidate.customer_id,
        payment_method_id=candidate.payment_method_id,
    ):
        return None
    return RechargePlan(
        account_id=account_id,
        attempt_id=attempt_id,
        amount=candidate.amount,
        currency=candidate.currency,
        customer_id=candidate.customer_id,
        payment_method_id=candidate.payment_method_id,
    )


async def apply_recharge_intent(
    session: AsyncSession,
    plan_account: uuid.UUID,
    attempt_id: uuid.UUID,
    intent: dict[str, Any],
    config: BillingConfig,
) -> Outcome:
    """What Stripe's answer to the off-session charge means for the attempt."""
    fields = Fields(intent, "payment_intent")
    status = fields.text("status")
    payment_intent_id = fields.id()
    await repository.set_attempt_intent(
        session, account_id=plan_account, attempt_id=attempt_id, payment_intent_id=payment_intent_id
    )
    if status == "succeeded":
        try:
            return await credit_recharge_intent(session, fields, tiers=config.tiers)
        except EventRefused as refused:
            return refused.outcome
    if status in ("requires_payment_method", "requires_action", "canceled"):
        error = fields.nested("last_payment_error")
        return await fail_recharge(
            session,
            account_id=plan_account,
            attempt_id=attempt_id,
            payment_intent_id=payment_intent_id,
            reason=error.optional_text("message") or f"payment intent {status}",
            config=config,
        )
    return Outcome.PENDING  # processing: the webhook reports the outcome
