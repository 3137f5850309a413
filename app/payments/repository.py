"""All SQL of payments: the webhook inbox, Stripe customers and payments, auto-recharge."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import (
    Account,
    AutoRechargeSetting,
    RechargeAttempt,
    StripeCustomer,
    StripeEvent,
    StripePayment,
)
from app.payments.events import Outcome, ReceivedEvent

# ── accounts ────────────────────────────────────────────────────────────────────────────────


async def account_currency(session: AsyncSession, account_id: uuid.UUID) -> str | None:
    return await session.scalar(select(Account.currency).where(Account.id == account_id))


async def account_contact(session: AsyncSession, account_id: uuid.UUID) -> tuple[str, str | None]:
    row = (
        await session.execute(select(Account.name, Account.email).where(Account.id == account_id))
    ).one()
    return row.name, row.email


# ── the webhook inbox ───────────────────────────────────────────────────────────────────────


async def insert_event(session: AsyncSession, event: ReceivedEvent) -> bool:
    """False when the event was already stored (a re-delivery, or a concurrent one). A rejected
    event is stored as processed, with its reason: nothing ever picks it up again."""
    values: dict[str, Any] = {
        "id": event.id,
        "type": event.type,
        "payload": event.payload,
        "body": event.body,
    }
    if event.rejection is not None:
        values |= {
            "processed_at": func.now(),
            "outcome": Outcome.REJECTED,
            "rejection": event.rejection[:2000],
        }
    inserted = await session.scalar(
        insert(StripeEvent)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["id"])
        .returning(StripeEvent.id)
    )
    return inserted is not None


async def reject_event(session: AsyncSession, event_id: str, reason: str) -> None:
    """Done with, as rejected: its fields cannot be acted on, so retrying cannot help."""
    await session.execute(
        update(StripeEvent)
        .where(StripeEvent.id == event_id)
        .values(
            processed_at=func.now(),
            outcome=Outcome.REJECTED,
            rejection=reason[:2000],
            attempts=StripeEvent.attempts + 1,
            last_error=None,
        )
    )


async def lock_unprocessed_event(session: AsyncSession, event_id: str) -> StripeEvent | None:
    """The event, locked, if nobody processed it yet. A concurrent re-delivery waits here for
    the first one's commit and then finds it processed."""
    return await session.scalar(
        select(StripeEvent)
        .where(StripeEvent.id == event_id, StripeEvent.processed_at.is_(None))
        .with_for_update()
    )


async def mark_event_processed(session: AsyncSession, event_id: str, outcome: str) -> None:
    await session.execute(
        update(StripeEvent)
        .where(StripeEvent.id == event_id)
        .values(
            processed_at=func.now(),
            outcome=outcome,
            attempts=StripeEvent.attempts + 1,
            last_error=None,
        )
    )


async def record_event_failure(session: AsyncSession, event_id: str, error: str) -> None:
    await session.execute(
        update(StripeEvent)
        .where(StripeEvent.id == event_id, StripeEvent.processed_at.is_(None))
        .values(attempts=StripeEvent.attempts + 1, last_error=error[:2000])
    )


async def unprocessed_event_ids(
    session: AsyncSession, *, received_before: timedelta, limit: int = 100
) -> list[str]:
    result = await session.scalars(
        select(StripeEvent.id)
        .where(
            StripeEvent.processed_at.is_(None),
            StripeEvent.received_at < func.now() - received_before,
        )
        .order_by(StripeEvent.received_at)
        .limit(limit)
    )
    return list(result)


# ── customers and payment methods ───────────────────────────────────────────────────────────


async def get_customer(session: AsyncSession, account_id: uuid.UUID) -> StripeCustomer | None:
    return await session.scalar(
        select(StripeCustomer).where(StripeCustomer.account_id == account_id)
    )


async def remember_customer(
    session: AsyncSession, *, account_id: uuid.UUID, customer_id: str
) -> None:
    """The Customer Stripe made at the account's first top-up, reused by the next ones; the
    first one stored stays (two first top-ups paid at once made two)."""
    await session.execute(
        insert(StripeCustomer)
        .values(account_id=account_id, customer_id=customer_id)
        .on_conflict_do_nothing(index_elements=["account_id"])
    )


async def save_payment_method(
    session: AsyncSession,
    *,
    account_id: uuid.UUID,
    customer_id: str,
    payment_method_id: str,
    saved_at: datetime,
) -> bool:
    """Remember the card of a top-up, with the Customer it is saved on, for auto-recharge;
    unless a newer card is already saved (webhooks arrive in any order, this one possibly
    before its session's)."""
    statement = insert(StripeCustomer).values(
        account_id=account_id,
        customer_id=customer_id,
        payment_method_id=payment_method_id,
        payment_method_saved_at=saved_at,
    )
    stored = StripeCustomer.payment_method_saved_at
    result = await session.execute(
        statement.on_conflict_do_update(
            index_elements=["account_id"],
            set_={
                "customer_id": statement.excluded.customer_id,
                "payment_method_id": statement.excluded.payment_method_id,
                "payment_method_saved_at": statement.excluded.payment_method_saved_at,
            },
            where=stored.is_(None) | (stored <= statement.excluded.payment_method_saved_at),
        ).returning(StripeCustomer.account_id)
    )
    return result.first() is not None


# ── credited payments ───────────────────────────────────────────────────────────────────────


async def insert_payment(
    session: AsyncSession,
    *,
    account_id: uuid.UUID,
    payment_intent_id: str,
    source: str,
    checkout_session_id: str | None,
    currency: str,
    amount_minor: int,
) -> None:
    await session.execute(
        insert(StripePayment)
        .values(
            account_id=account_id,
            payment_intent_id=payment_intent_id,
            source=source,
            checkout_session_id=checkout_session_id,
            currency=currency,
            amount_minor=amount_minor,
        )
        .on_conflict_do_nothing(index_elements=["account_id", "payment_intent_id"])
    )


async def lock_payment(session: AsyncSession, payment_intent_id: str) -> StripePayment | None:
    """The credited payment of a PaymentIntent, locked: refunds of one charge are applied one
    at a time."""
    return await session.scalar(
        select(StripePayment)
        .where(StripePayment.payment_intent_id == payment_intent_id)
        .with_for_update()
    )


async def set_refunded(
    session: AsyncSession, *, account_id: uuid.UUID, payment_intent_id: str, refunded_minor: int
) -> None:
    await session.execute(
        update(StripePayment)
        .where(
            StripePayment.account_id == account_id,
            StripePayment.payment_intent_id == payment_intent_id,
        )
        .values(refunded_minor=refunded_minor)
    )


# ── auto-recharge ───────────────────────────────────────────────────────────────────────────


async def get_recharge_setting(
    session: AsyncSession, account_id: uuid.UUID
) -> AutoRechargeSetting | None:
    return await session.scalar(
        select(AutoRechargeSetting)
        .where(AutoRechargeSetting.account_id == account_id)
        .execution_options(populate_existing=True)
    )


async def upsert_recharge_setting(
    session: AsyncSession,
    *,
    account_id: uuid.UUID,
    enabled: bool,
    threshold: Decimal,
    amount: Decimal,
) -> None:
    """Saving the settings also clears the decline back-off: the customer has acted (the
    hourly cap still applies)."""
    values = {
        "enabled": enabled,
        "threshold": threshold,
        "amount": amount,
        "failures": 0,
        "retry_after": None,
        "updated_at": func.now(),
    }
    await session.execute(
        insert(AutoRechargeSetting)
        .values(account_id=account_id, **values)
        .on_conflict_do_update(index_elements=["account_id"], set_=values)
    )


@dataclass(frozen=True, slots=True)
class RechargeCandidate:
    account_id: uuid.UUID
    enabled: bool
    threshold: Decimal
    amount: Decimal
    balance: Decimal
    currency: str
    in_backoff: bool
    pending: bool
    recent_attempts: int
    customer_id: str | None
    payment_method_id: str | None


LOCK_CANDIDATE_SQL = text(
    """
    SELECT s.account_id, s.enabled, s.threshold, s.amount, a.balance, a.currency,
           coalesce(s.retry_after > now(), false) AS in_backoff,
           EXISTS (SELECT 1 FROM recharge_attempts r
                   WHERE r.account_id = s.account_id AND r.status = 'pending') AS pending,
           (SELECT count(*) FROM recharge_attempts r
            WHERE r.account_id = s.account_id
              AND r.created_at > now() - interval '1 hour') AS recent_attempts,
           c.customer_id, c.payment_method_id
    FROM auto_recharge_settings s
    JOIN accounts a ON a.id = s.account_id
    LEFT JOIN stripe_customers c ON c.account_id = s.account_id
    WHERE s.account_id = :account_id
    FOR UPDATE OF s
    """
)


async def lock_recharge_candidate(
    session: AsyncSession, account_id: uuid.UUID
) -> RechargeCandidate | None:
    """The account's settings row, locked, with what the decision needs: deciders for one
    account run one at a time, so the hourly count they read is exact."""
    row = (await session.execute(LOCK_CANDIDATE_SQL, {"account_id": account_id})).one_or_none()
    if row is None:
        return None
    return RechargeCandidate(
        account_id=row.account_id,
        enabled=row.enabled,
        threshold=row.threshold,
        amount=row.amount,
        balance=row.balance,
        currency=row.currency,
        in_backoff=row.in_backoff,
        pending=row.pending,
        recent_attempts=int(row.recent_attempts),
        customer_id=row.customer_id,
        payment_method_id=row.payment_method_id,
    )


async def insert_pending_attempt(
    session: AsyncSession,
    *,
    account_id: uuid.UUID,
    attempt_id: uuid.UUID,
    amount: Decimal,
    currency: str,
    customer_id: str,
    payment_method_id: str,
) -> bool:
    """False when the account already has an attempt in flight (the unique partial index)."""
    inserted = await session.scalar(
        insert(RechargeAttempt)
        .values(
            account_id=account_id,
            id=attempt_id,
            amount=amount,
            currency=currency,
            customer_id=customer_id,
            payment_method_id=payment_method_id,
            status="pending",
        )
        .on_conflict_do_nothing(
            index_elements=["account_id"], index_where=text("status = 'pending'")
        )
        .returning(RechargeAttempt.id)
    )
    return inserted is not None


async def set_attempt_intent(
    session: AsyncSession,
    *,
    account_id: uuid.UUID,
    attempt_id: uuid.UUID,
    payment_intent_id: str | None,
    error: str | None = None,
) -> None:
    values: dict[str, Any] = {"error": error}
    if payment_intent_id is not None:
        values["payment_intent_id"] = payment_intent_id
    await session.execute(
        update(RechargeAttempt)
        .where(RechargeAttempt.account_id == account_id, RechargeAttempt.id == attempt_id)
        .values(**values)
    )


async def finish_attempt(
    session: AsyncSession,
    *,
    account_id: uuid.UUID,
    attempt_id: uuid.UUID | None,
    payment_intent_id: str | None,
    status: str,
    error: str | None = None,
) -> tuple[Decimal, str] | None:
    """Move a pending attempt (by id, else by PaymentIntent) to its outcome; returns its
    amount and currency, or None when it was already finished: each outcome is counted once,
    whichever path reports it first."""
    if attempt_id is not None:
        match = RechargeAttempt.id == attempt_id
    elif payment_intent_id is not None:
        match = RechargeAttempt.payment_intent_id == payment_intent_id
    else:
        return None
    values: dict[str, Any] = {"status": status, "error": error, "finished_at": func.now()}
    if payment_intent_id is not None:
        values["payment_intent_id"] = payment_intent_id
    result = await session.execute(
        update(RechargeAttempt)
        .where(
            RechargeAttempt.account_id == account_id,
            match,
            RechargeAttempt.status == "pending",
        )
        .values(**values)
        .returning(RechargeAttempt.amount, RechargeAttempt.currency)
    )
    row = result.first()
    return None if row is None else (row.amount, row.currency)


async def reset_recharge_failures(session: AsyncSession, account_id: uuid.UUID) -> None:
    await session.execute(
        update(AutoRechargeSetting)
        .where(AutoRechargeSetting.account_id == account_id)
        .values(failures=0, retry_after=None)
    )


async def back_off_recharge(
    session: AsyncSession, account_id: uuid.UUID, *, base: timedelta, ceiling: timedelta
) -> None:
    """One more consecutive decline: wait base × 2^(failures − 1), at most `ceiling`."""
    await session.execute(
        text(
            """
            UPDATE auto_recharge_settings
            SET failures = failures + 1,
                retry_after = now() + least(
                    make_interval(secs => :base * power(2, least(failures, 30))),
                    make_interval(secs => :ceiling))
            WHERE account_id = :account_id
            """
        ),
        {
            "account_id": account_id,
            "base": base.total_seconds(),
            "ceiling": ceiling.total_seconds(),
        },
    )


DUE_SQL = text(
    """
    SELECT s.account_id
    FROM auto_recharge_settings s
    JOIN accounts a ON a.id = s.account_id
    WHERE s.enabled
      AND a.balance < s.threshold
      AND (s.retry_after IS NULL OR s.retry_after <= now())
      AND NOT EXISTS (SELECT 1 FROM recharge_attempts r
                      WHERE r.account_id = s.account_id AND r.status = 'pending')
      AND (CAST(:account_ids AS uuid[]) IS NULL OR s.account_id = ANY(CAST(:account_ids AS uuid[])))
    ORDER BY s.account_id
    LIMIT :limit
    """
)


async def accounts_due_for_recharge(
    session: AsyncSession, account_ids: Sequence[uuid.UUID] | None = None, *, limit: int = 500
) -> list[uuid.UUID]:
    """Accounts whose balance is below their threshold and that may be charged now (the
    hourly cap is checked under the lock, by the decider)."""
    result = await session.execute(
        DUE_SQL,
        {"account_ids": list(account_ids) if account_ids is not None else None, "limit": limit},
    )
    return [row.account_id for row in result]


async def stale_attempts(
    session: AsyncSession, *, older_than: timedelta, limit: int = 100
) -> list[RechargeAttempt]:
    result = await session.scalars(
        select(RechargeAttempt)
        .where(
            RechargeAttempt.status == "pending",
            RechargeAttempt.created_at < func.now() - older_than,
        )
        .order_by(RechargeAttempt.created_at)
        .limit(limit)
    )
    return list(result)


async def latest_attempt(session: AsyncSession, account_id: uuid.UUID) -> RechargeAttempt | None:
    return await session.scalar(
        select(RechargeAttempt)
        .where(RechargeAttempt.account_id == account_id)
        .order_by(RechargeAttempt.created_at.desc())
        .limit(1)
    )
