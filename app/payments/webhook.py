"""What each Stripe event does to the ledger (SPEC 4), and the webhook's signature check. Never
commits: the inbox, which owns each event's unit of work, does.

Every credit or reversal goes through `credits.repository.append_entry` with a reference
derived from a Stripe id, so the unique (account_id, reference) of the ledger makes it happen
once, whichever event, re-delivery or code path reports it:

  stripe:cs:<checkout session>          purchase, Checkout top-up
  stripe:pi:<payment intent>            purchase, auto-recharge
  stripe:refund:<charge>:<refunded>     refund, up to the charge's cumulative refunded amount
  stripe:dispute:<dispute>              refund, the disputed amount

Each operation ends in one `Outcome`, the code stored with the event; a handler that cannot go
on raises `EventRefused` with the outcome to store, and `apply_event` returns it.
"""

from __future__ import annotations

import logging
import time
import uuid
from decimal import Decimal
from typing import Any

import stripe
from sqlalchemy.ext.asyncio import AsyncSession

from app.credits import repository as ledger
from app.credits.schemas import LedgerKind
from app.credits.tiers import TierTable
from app.db.models import Account
from app.errors import InvalidRequest
from app.notifications import service as notifications
from app.notifications.schemas import EventType
from app.payments import repository
from app.payments.config import BillingConfig
from app.payments.currency import from_minor
from app.payments.events import EventRefused, Fields, MalformedStripeData, Outcome

logger = logging.getLogger(__name__)


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
    try:
        if kind in ("checkout.session.completed", "checkout.session.async_payment_succeeded"):
            return await credit_checkout_session(
                session, fields, event_id=str(event["id"]), tiers=config.tiers
            )
        if kind == "checkout.session.async_payment_failed":
            return Outcome.PAYMENT_FAILED
        if kind == "charge.refunded":
            return await reverse_refunds(session, fields, tiers=config.tiers)
        if kind == "charge.dispute.created":
            return await reverse_dispute(session, fields, tiers=config.tiers)
        if kind == "payment_intent.succeeded":
            return await payment_intent_succeeded(session, fields, tiers=config.tiers)
        if kind == "payment_intent.payment_failed":
            return await payment_intent_failed(session, fields, config)
    except EventRefused as refused:
        return refused.outcome
    return Outcome.IGNORED


async def credit_checkout_session(
    session: AsyncSession,
    checkout: Fields,
    *,
    event_id: str | None = None,
    tiers: TierTable | None = None,
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
    outcome = await _credit_payment(
        session,
        account_id=account_id,
        amount_minor=amount_minor,
        currency=currency,
        reference=f"stripe:cs:{session_id}",
        description="Top-up through Stripe Checkout",
        details={
            "checkout_session": session_id,
            "payment_intent": payment_intent_id,
            "amount_minor": amount_minor,
            "currency": currency,
            "event": event_id,
        },
        payment_intent_id=payment_intent_id,
        source="checkout",
        checkout_session_id=session_id,
        tiers=tiers,
    )
    if outcome is not Outcome.NOTHING_PAID and customer_id is not None:
        await repository.remember_customer(session, account_id=account_id, customer_id=customer_id)
    return outcome


async def _credit_payment(
    session: AsyncSession,
    *,
    account_id: uuid.UUID,
    amount_minor: int,
    currency: str,
    reference: str,
    description: str,
    details: dict[str, object],
    payment_intent_id: str | None,
    source: str,
    checkout_session_id: str | None,
    tiers: TierTable | None = None,
) -> Outcome:
    """One `purchase` of a paid Stripe payment, once per `reference`, and the payment recorded
    so that its refunds and disputes can be matched to it."""
    amount = await _amount_in_account_currency(
        session, account_id, amount_minor, currency, reference
    )
    if amount <= 0:
        return Outcome.NOTHING_PAID
    entry = await ledger.append_entry(
        session,
        tiers=tiers,
        account_id=account_id,
        kind=LedgerKind.PURCHASE,
        amount=amount,
        reference=reference,
        description=description,
        details=details,
    )
    if entry is not None:
        await notifications.emit(
            session,
            account_id,
            EventType.AUTO_RECHARGE_SUCCEEDED
            if source == "auto_recharge"
            else EventType.PAYMENT_SUCCEEDED,
            {"amount": amount, "currency": await _currency(session, account_id)},
        )
    if payment_intent_id is not None:
        await repository.insert_payment(
            session,
            account_id=account_id,
            payment_intent_id=payment_intent_id,
            source=source,
            checkout_session_id=checkout_session_id,
            currency=currency,
            amount_minor=amount_minor,
        )
    return Outcome.CREDITED if entry is not None else Outcome.ALREADY_CREDITED


async def reverse_refunds(
    session: AsyncSession, charge: Fields, *, tiers: TierTable | None = None
) -> Outcome:
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
        tiers=tiers,
        account_id=payment.account_id,
        kind=LedgerKind.REFUND,
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
    await notifications.emit(
        session,
        payment.account_id,
        EventType.PAYMENT_REFUNDED,
        {"amount": amount, "currency": payment.currency, "charge": charge_id},
    )
    return Outcome.REVERSED


async def reverse_dispute(
    session: AsyncSession, dispute: Fields, *, tiers: TierTable | None = None
) -> Outcome:
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
        tiers=tiers,
        account_id=payment.account_id,
        kind=LedgerKind.REFUND,
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
    if entry is None:
        return Outcome.ALREADY_REVERSED
    await notifications.emit(
        session,
        payment.account_id,
        EventType.PAYMENT_REFUNDED,
        {"amount": amount, "currency": payment.currency, "dispute": dispute_id},
    )
    return Outcome.REVERSED


async def payment_intent_succeeded(
    session: AsyncSession, intent: Fields, *, tiers: TierTable | None = None
) -> Outcome:
    purpose = intent.mapping("metadata").get("purpose")
    if purpose == "auto_recharge":
        return await credit_recharge_intent(session, intent, tiers=tiers)
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


async def credit_recharge_intent(
    session: AsyncSession, intent: Fields, *, tiers: TierTable | None = None
) -> Outcome:
    """Credit a succeeded auto-recharge PaymentIntent, once per PaymentIntent; used by the
    webhook and by the recharger when Stripe answers `succeeded` at once. Raises
    `EventRefused` for an unknown account or another currency."""
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
    outcome = await _credit_payment(
        session,
        account_id=account_id,
        amount_minor=received,
        currency=currency,
        reference=f"stripe:pi:{payment_intent_id}",
        description="Auto-recharge",
        details={
            "payment_intent": payment_intent_id,
            "amount_minor": received,
            "currency": currency,
        },
        payment_intent_id=payment_intent_id,
        source="auto_recharge",
        checkout_session_id=None,
        tiers=tiers,
    )
    # The attempt is finished either way: left pending, it would block every later recharge
    # until it went stale.
    paid = outcome is not Outcome.NOTHING_PAID
    if (
        await repository.finish_attempt(
            session,
            account_id=account_id,
            attempt_id=_uuid(metadata.get("attempt_id")),
            payment_intent_id=payment_intent_id,
            status="succeeded" if paid else "failed",
            error=None if paid else "the payment received nothing",
        )
        and paid
    ):
        await repository.reset_recharge_failures(session, account_id)
    return outcome


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
    finished = await repository.finish_attempt(
        session,
        account_id=account_id,
        attempt_id=attempt_id,
        payment_intent_id=payment_intent_id,
        status="failed",
        error=reason,
    )
    if finished is None:
        return Outcome.ALREADY_FINISHED
    await repository.back_off_recharge(
        session, account_id, base=config.recharge_backoff, ceiling=config.recharge_backoff_max
    )
    amount, currency = finished
    await notifications.emit(
        session,
        account_id,
        EventType.AUTO_RECHARGE_FAILED,
        {"amount": amount, "currency": currency, "reason": reason},
    )
    return Outcome.RECHARGE_FAILED


async def _currency(session: AsyncSession, account_id: uuid.UUID) -> str:
    account = await session.get(Account, account_id)
    return account.currency if account is not None else "EUR"


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
) -> Decimal:
    """The amount as an exact Decimal in the account's currency (the ledger has one currency
    and Tollgate never converts); refused for an unknown account or another currency."""
    account_currency = await repository.account_currency(session, account_id)
    if account_currency is None:
        logger.warning("%s names account %s, which does not exist", source, account_id)
        raise EventRefused(Outcome.UNKNOWN_ACCOUNT)
    if currency != account_currency:
        logger.error(
            "%s is in %s, account %s is in %s", source, currency, account_id, account_currency
        )
        raise EventRefused(Outcome.CURRENCY_MISMATCH)
    return from_minor(amount_minor, currency)
