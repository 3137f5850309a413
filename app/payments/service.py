"""Payment rules: top-up amounts, webhook verification, and what each Stripe event does to the
ledger. Never commits: the request, inbox or job that owns the transaction does.

Every credit or reversal goes through `credits.repository.append_entry` with a reference
derived from a Stripe id, so the unique (account_id, reference) of the ledger makes it happen
once, whichever event, re-delivery or code path reports it:

  stripe:cs:<checkout session>          purchase, Checkout top-up
  stripe:pi:<payment intent>            purchase, auto-recharge
  stripe:refund:<charge>:<refunded>     refund, up to the charge's cumulative refunded amount
  stripe:dispute:<dispute>              refund, the disputed amount
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import stripe
from sqlalchemy.ext.asyncio import AsyncSession

from app.credits import repository as ledger
from app.db.models import Account
from app.errors import InvalidRequest, ServiceUnavailable
from app.money import money_str, parse_money
from app.payments import repository
from app.payments.config import BillingConfig
from app.payments.currency import from_minor, to_minor
from app.payments.events import Fields, MalformedStripeData, Outcome

logger = logging.getLogger(__name__)

RETURN_PATH = "/dashboard/topup/return?session_id={CHECKOUT_SESSION_ID}"
CANCEL_PATH = "/dashboard/topup?canceled=1"


# ── top-up amounts ──────────────────────────────────────────────────────────────────────────


def parse_topup_amount(
    value: object, *, currency: str, config: BillingConfig, param: str = "amount"
) -> Decimal:
    """A top-up or auto-recharge amount: a decimal string within the configured limits, in
    whole minor units of the currency."""
    try:
        amount = parse_money(value, field=param)
        to_minor(amount, currency)
    except ValueError as exc:
        raise InvalidRequest(str(exc), param=param, code="invalid_amount") from exc
    if not config.topup_min <= amount <= config.topup_max:
        raise InvalidRequest(
            f"{param} must be between {money_str(config.topup_min)} and "
            f"{money_str(config.topup_max)} {currency}, not {money_str(amount)}.",
            param=param,
            code="amount_out_of_range",
        )
    return amount


def checkout_urls(config: BillingConfig) -> tuple[str, str]:
    """(success URL, cancel URL). Stripe fills in `{CHECKOUT_SESSION_ID}` itself."""
    return config.public_url + RETURN_PATH, config.public_url + CANCEL_PATH


def product_name(amount: Decimal, currency: str) -> str:
    return f"Tollgate prepaid credit ({money_str(amount)} {currency})"


async def checkout_credited(
    session: AsyncSession, account_id: uuid.UUID, checkout_session_id: str
) -> bool:
    """Whether the top-up of this Checkout Session is on the account yet (for the dashboard's
    return page, which Stripe may reach before its webhook does)."""
    reference = f"stripe:cs:{checkout_session_id}"
    return await ledger.find_entry(session, account_id, reference) is not None


# ── webhook verification ────────────────────────────────────────────────────────────────────


def verify_signature(payload: bytes, signature: str | None, secret: str, tolerance: int) -> None:
    """Nothing if `Stripe-Signature` is a valid signature of exactly these bytes by `secret`,
    made at most `tolerance` seconds from now, in either direction; else a 400. (The SDK only
    refuses old timestamps: a header signed for the future would stay replayable for as long.)
    """
    try:
        stripe.WebhookSignature.verify_header(payload, signature, secret, tolerance)
    except (stripe.SignatureVerificationError, UnicodeDecodeError) as exc:
        # The SDK decodes the body before checking: bytes Stripe never sends fail there.
        reason = exc.user_message if isinstance(exc, stripe.SignatureVerificationError) else None
        raise _invalid_signature(reason or str(exc)) from exc
    signed_at = _signed_at(signature or "")
    if tolerance and signed_at > time.time() + tolerance:
        raise _invalid_signature(f"Timestamp outside the tolerance zone ({signed_at})")


def _signed_at(header: str) -> int:
    """The header's first `t`, read exactly as the SDK reads it (which has accepted it)."""
    items = [item.split("=", 2) for item in header.split(",")]
    return int(next(item[1] for item in items if item[0] == "t"))


def _invalid_signature(reason: str) -> InvalidRequest:
    return InvalidRequest(
        f"Invalid Stripe signature: {reason}", param="Stripe-Signature", code="invalid_signature"
    )


# ── acting on events ────────────────────────────────────────────────────────────────────────


async def apply_event(
    session: AsyncSession, event: dict[str, Any], config: BillingConfig
) -> Outcome:
    """Apply one stored event; returns its outcome (stored in the inbox). Raises
    `MalformedStripeData` before writing anything when a field it needs is missing, of the
    wrong type or out of range."""
    kind = event.get("type")
    obj = (event.get("data") or {}).get("object")
    if not isinstance(kind, str) or not isinstance(obj, dict):  # checked on receipt
        raise MalformedStripeData("the event lacks a type or data.object")
    fields = Fields(obj, "data.object")
    if kind in ("checkout.session.completed", "checkout.session.async_payment_succeeded"):
        return await credit_checkout_session(session, fields, event_id=str(event["id"]))
    if kind == "checkout.session.async_payment_failed":
        return Outcome.PAYMENT_FAILED
    if kind == "charge.refunded":
        return await reverse_refunds(session, fields)
    if kind == "charge.dispute.created":
        return await reverse_dispute(session, fields)
    if kind == "payment_intent.succeeded":
        return await payment_intent_succeeded(session, fields)
    if kind == "payment_intent.payment_failed":
        return await payment_intent_failed(session, fields, config)
    return Outcome.IGNORED


async def credit_checkout_session(
    session: AsyncSession, checkout: Fields, *, event_id: str | None = None
) -> Outcome:
    """One `purchase` of `amount_total` for a paid Checkout Session, once per session."""
    if (checkout.optional_text("mode") or "payment") != "payment":
        return Outcome.IGNORED_MODE
    if checkout.text("payment_status") != "paid":
        return Outcome.NOT_PAID
    session_id = checkout.id()
    amount_minor = checkout.minor_amount("amount_total")
    currency = checkout.currency()
    payment_intent_id = checkout.stripe_id("payment_intent")
    customer_id = checkout.stripe_id("customer")
    account_id = _account_of(
        checkout.optional_text("client_reference_id"), checkout.mapping("metadata")
    )
    if account_id is None:
        logger.warning("Checkout Session %s names no Tollgate account", session_id)
        return Outcome.UNKNOWN_ACCOUNT
    amount = await _amount_in_account_currency(
        session, account_id, amount_minor, currency, session_id
    )
    if isinstance(amount, Outcome):
        return amount
    if amount <= 0:
        return Outcome.NOTHING_PAID
    entry = await ledger.append_entry(
        session,
        account_id=account_id,
        kind="purchase",
        amount=amount,
        reference=f"stripe:cs:{session_id}",
        description="Top-up through Stripe Checkout",
        details={
            "checkout_session": session_id,
            "payment_intent": payment_intent_id,
            "amount_minor": amount_minor,
            "currency": currency,
            "event": event_id,
        },
    )
    if customer_id is not None:
        await repository.remember_customer(session, account_id=account_id, customer_id=customer_id)
    if payment_intent_id is not None:
        await repository.insert_payment(
            session,
            account_id=account_id,
            payment_intent_id=payment_intent_id,
            source="checkout",
            checkout_session_id=session_id,
            currency=currency,
            amount_minor=amount_minor,
        )
    return Outcome.CREDITED if entry is not None else Outcome.ALREADY_CREDITED


async def reverse_refunds(session: AsyncSession, charge: Fields) -> Outcome:
    """A `refund` entry for what was refunded on the charge since the last one we applied.

    `charge.refunded` carries the charge's cumulative `amount_refunded`, not the refund list
    (not expanded in webhooks since API 2022-11-15), so each step of that total is its own
    ledger reference; the payment's row lock orders concurrent deliveries, and older or
    repeated totals reverse nothing."""
    charge_id = charge.id()
    payment_intent_id = charge.stripe_id("payment_intent")
    currency = charge.currency()
    refunded = charge.minor_amount("amount_refunded")
    refund_ids = charge.ids_in_list("refunds")
    payment = (
        await repository.lock_payment(session, payment_intent_id) if payment_intent_id else None
    )
    if payment is None:
        logger.warning("refund on charge %s of a payment Tollgate did not credit", charge_id)
        return Outcome.UNKNOWN_PAYMENT
    if currency != payment.currency:
        logger.error("refund on charge %s in another currency", charge_id)
        return Outcome.CURRENCY_MISMATCH
    if refunded <= payment.refunded_minor:
        return Outcome.ALREADY_REVERSED
    refunded = min(refunded, payment.amount_minor)
    amount = from_minor(refunded - payment.refunded_minor, payment.currency)
    await ledger.append_entry(
        session,
        account_id=payment.account_id,
        kind="refund",
        amount=-amount,
        reference=f"stripe:refund:{charge_id}:{refunded}",
        description="Stripe refund",
        details={
            "charge": charge_id,
            "payment_intent": payment_intent_id,
            "amount_refunded_minor": refunded,
            "refunds": refund_ids,
        },
    )
    await repository.set_refunded(
        session,
        account_id=payment.account_id,
        payment_intent_id=payment.payment_intent_id,
        refunded_minor=refunded,
    )
    return Outcome.REVERSED


async def reverse_dispute(session: AsyncSession, dispute: Fields) -> Outcome:
    """A `refund` entry for the disputed amount, once per dispute: the money is withdrawn
    from the balance when the dispute opens."""
    dispute_id = dispute.id()
    payment_intent_id = dispute.stripe_id("payment_intent")
    currency = dispute.currency()
    # A dispute is of a positive amount: a negative one used to be read as 0 and written as a
    # 0.00 refund.
    disputed = dispute.minor_amount("amount", positive=True)
    charge_id = dispute.stripe_id("charge")
    reason = dispute.optional_text("reason")
    payment = (
        await repository.lock_payment(session, payment_intent_id) if payment_intent_id else None
    )
    if payment is None:
        logger.warning("dispute %s on a payment Tollgate did not credit", dispute_id)
        return Outcome.UNKNOWN_PAYMENT
    if currency != payment.currency:
        logger.error("dispute %s in another currency", dispute_id)
        return Outcome.CURRENCY_MISMATCH
    amount = from_minor(min(disputed, payment.amount_minor), payment.currency)
    entry = await ledger.append_entry(
        session,
        account_id=payment.account_id,
        kind="refund",
        amount=-amount,
        reference=f"stripe:dispute:{dispute_id}",
        description="Stripe dispute",
        details={
            "dispute": dispute_id,
            "charge": charge_id,
            "payment_intent": payment_intent_id,
            "reason": reason,
        },
    )
    return Outcome.REVERSED if entry is not None else Outcome.ALREADY_REVERSED


async def payment_intent_succeeded(session: AsyncSession, intent: Fields) -> Outcome:
    purpose = intent.mapping("metadata").get("purpose")
    if purpose == "auto_recharge":
        return await credit_recharge_intent(session, intent)
    if purpose == "topup":
        # Checkout's own PaymentIntent: the purchase is credited by the session's event; this
        # one tells which card was saved for off-session use.
        return await save_topup_card(session, intent)
    return Outcome.IGNORED


async def save_topup_card(session: AsyncSession, intent: Fields) -> Outcome:
    account_id = _account_of(None, intent.mapping("metadata"))
    payment_method_id = intent.stripe_id("payment_method")
    customer_id = intent.stripe_id("customer")
    future_usage = intent.optional_text("setup_future_usage")
    if (
        account_id is None
        or payment_method_id is None
        or customer_id is None
        or future_usage != "off_session"
    ):
        return Outcome.NO_CARD_SAVED
    saved = await repository.save_payment_method(
        session,
        account_id=account_id,
        customer_id=customer_id,
        payment_method_id=payment_method_id,
        saved_at=intent.timestamp("created"),
    )
    return Outcome.CARD_SAVED if saved else Outcome.CARD_NOT_NEWER


async def credit_recharge_intent(session: AsyncSession, intent: Fields) -> Outcome:
    """Credit a succeeded auto-recharge PaymentIntent, once per PaymentIntent; used by the
    webhook and by the recharger when Stripe answers `succeeded` at once."""
    if intent.text("status") != "succeeded":
        return Outcome.NOT_SUCCEEDED
    metadata = intent.mapping("metadata")
    payment_intent_id = intent.id()
    received = intent.optional_minor_amount("amount_received")
    if received is None:
        received = intent.minor_amount("amount")
    currency = intent.currency()
    account_id = _account_of(None, metadata)
    if account_id is None:
        return Outcome.UNKNOWN_ACCOUNT
    amount = await _amount_in_account_currency(
        session, account_id, received, currency, payment_intent_id
    )
    if isinstance(amount, Outcome):
        return amount
    if amount <= 0:
        return Outcome.NOTHING_PAID
    entry = await ledger.append_entry(
        session,
        account_id=account_id,
        kind="purchase",
        amount=amount,
        reference=f"stripe:pi:{payment_intent_id}",
        description="Auto-recharge",
        details={
            "payment_intent": payment_intent_id,
            "amount_minor": received,
            "currency": currency,
        },
    )
    await repository.insert_payment(
        session,
        account_id=account_id,
        payment_intent_id=payment_intent_id,
        source="auto_recharge",
        checkout_session_id=None,
        currency=currency,
        amount_minor=received,
    )
    if await repository.finish_attempt(
        session,
        account_id=account_id,
        attempt_id=_uuid(metadata.get("attempt_id")),
        payment_intent_id=payment_intent_id,
        status="succeeded",
    ):
        await repository.reset_recharge_failures(session, account_id)
    return Outcome.CREDITED if entry is not None else Outcome.ALREADY_CREDITED


async def payment_intent_failed(
    session: AsyncSession, intent: Fields, config: BillingConfig
) -> Outcome:
    metadata = intent.mapping("metadata")
    if metadata.get("purpose") != "auto_recharge":
        return Outcome.IGNORED
    payment_intent_id = intent.id()
    error = intent.nested("last_payment_error")
    reason = error.optional_text("message") or error.optional_text("code") or "payment failed"
    account_id = _account_of(None, metadata)
    if account_id is None:
        return Outcome.UNKNOWN_ACCOUNT
    return await fail_recharge(
        session,
        account_id=account_id,
        attempt_id=_uuid(metadata.get("attempt_id")),
        payment_intent_id=payment_intent_id,
        reason=reason,
        config=config,
    )


async def fail_recharge(
    session: AsyncSession,
    *,
    account_id: uuid.UUID,
    attempt_id: uuid.UUID | None,
    payment_intent_id: str | None,
    reason: str,
    config: BillingConfig,
) -> Outcome:
    """Mark the attempt failed and back off, once per attempt (the synchronous decline and
    the `payment_intent.payment_failed` event report the same failure)."""
    if not await repository.finish_attempt(
        session,
        account_id=account_id,
        attempt_id=attempt_id,
        payment_intent_id=payment_intent_id,
        status="failed",
        error=reason,
    ):
        return Outcome.ALREADY_FINISHED
    await repository.back_off_recharge(
        session, account_id, base=config.recharge_backoff, ceiling=config.recharge_backoff_max
    )
    return Outcome.RECHARGE_FAILED


# ── auto-recharge decisions ─────────────────────────────────────────────────────────────────


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
        return await credit_recharge_intent(session, fields)
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


# ── small parsers ───────────────────────────────────────────────────────────────────────────


def _uuid(value: object) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value)) if value else None
    except ValueError:
        return None


def _account_of(reference: object, metadata: object) -> uuid.UUID | None:
    """The account named by `client_reference_id` and/or `metadata.account_id`; None when
    neither names one or they disagree."""
    from_metadata = _uuid(metadata.get("account_id")) if isinstance(metadata, dict) else None
    from_reference = _uuid(reference)
    if from_reference and from_metadata and from_reference != from_metadata:
        return None
    return from_reference or from_metadata


async def _amount_in_account_currency(
    session: AsyncSession,
    account_id: uuid.UUID,
    amount_minor: int,
    currency: str,
    source: str,
) -> Decimal | Outcome:
    """The amount as an exact Decimal if it is in the account's currency (the ledger has one
    currency and Tollgate never converts); else the outcome to record."""
    account_currency = await repository.account_currency(session, account_id)
    if account_currency is None:
        logger.warning("%s names account %s, which does not exist", source, account_id)
        return Outcome.UNKNOWN_ACCOUNT
    if currency != account_currency:
        logger.error(
            "%s is in %s, account %s is in %s", source, currency, account_id, account_currency
        )
        return Outcome.CURRENCY_MISMATCH
    return from_minor(amount_minor, currency)
