"""Credit operations and the account view of SPEC 3.2. Never commits."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.credits import repository
from app.credits.limits import SpendLimit, key_subject, period_bounds
from app.credits.schemas import CREDIT_KINDS, LedgerKind
from app.credits.tiers import TierTable
from app.db.models import Account, LedgerEntry
from app.errors import InvalidRequest, NotFound
from app.money import ledger_amount_problem, money_str


@dataclass(frozen=True, slots=True)
class CreditResult:
    entry: LedgerEntry
    created: bool


async def add_credit(
    session: AsyncSession,
    account_id: uuid.UUID,
    *,
    amount: Decimal,
    kind: LedgerKind | str,
    reference: str | None,
    description: str | None = None,
    tiers: TierTable | None = None,
) -> CreditResult:
    if kind not in CREDIT_KINDS:
        raise InvalidRequest(f"kind must be one of {', '.join(CREDIT_KINDS)}", param="kind")
    kind = LedgerKind(kind)
    if not amount.is_finite() or amount <= 0:
        raise InvalidRequest("amount must be a positive decimal string", param="amount")
    if problem := ledger_amount_problem(amount):
        # Never rounded silently (a credit of 1e-13 would be stored as 0).
        raise InvalidRequest(f"amount {problem}", param="amount")
    if await session.get(Account, account_id) is None:
        raise NotFound(f"No account with id {account_id}", param="account_id")
    reference = reference or f"credit:{uuid.uuid4()}"
    entry = await repository.append_entry(
        session,
        account_id=account_id,
        kind=kind,
        amount=amount,
        reference=reference,
        description=description,
        tiers=tiers,
    )
    if entry is not None:
        return CreditResult(entry=entry, created=True)
    existing = await repository.find_entry(session, account_id, reference)
    assert existing is not None
    if existing.kind != kind or existing.amount != amount:
        raise InvalidRequest(
            f"reference {reference!r} was already used for a different credit",
            param="reference",
            code="idempotency_conflict",
        )
    return CreditResult(entry=existing, created=False)


async def adjust_credit(
    session: AsyncSession, account_id: uuid.UUID, *, amount: Decimal, reason: str
) -> LedgerEntry:
    """An operator's correction (positive or negative), with its reason as the description.
    May take the balance below zero: a correction states what is owed."""
    if not amount.is_finite() or amount == 0:
        raise InvalidRequest("amount must be a non-zero decimal", param="amount")
    if problem := ledger_amount_problem(amount):
        raise InvalidRequest(f"amount {problem}", param="amount")
    if not reason.strip():
        raise InvalidRequest("a correction needs a reason", param="reason")
    await lock_account(session, account_id)
    entry = await repository.append_entry(
        session,
        account_id=account_id,
        kind=LedgerKind.ADJUSTMENT,
        amount=amount,
        reference=f"adjustment:{uuid.uuid4()}",
        description=reason.strip(),
    )
    assert entry is not None  # a fresh reference
    return entry


def account_view(account: Account, tiers: TierTable) -> dict[str, Any]:
    tier = tiers.tier_for(account.total_purchased, account.total_usage)
    next_tier = tiers.next_tier(tier)
    user_limit = SpendLimit.from_stored(account.user_spend_limit)
    return {
        "id": str(account.id),
        "name": account.name,
        "email": account.email,
        "currency": account.currency,
        "balance": money_str(account.balance),
        "held": money_str(account.held),
        "available": money_str(account.balance - account.held),
        "total_purchased": money_str(account.total_purchased),
        "tier": {"name": tier.name, "rpm": tier.rpm, "tpm": tier.tpm},
        "next_tier": None
        if next_tier is None
        else {
            "name": next_tier.name,
            "min_total_purchased": money_str(next_tier.min_total),
            "rpm": next_tier.rpm,
            "tpm": next_tier.tpm,
        },
        "user_spend_limit": None if user_limit is None else user_limit.view(),
        "low_balance_threshold": None
        if account.low_balance_threshold is None
        else money_str(account.low_balance_threshold),
        "suspended": account.suspended_at is not None,
        "suspension_reason": account.suspension_reason,
        "created_at": account.created_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def ledger_entry_view(entry: LedgerEntry) -> dict[str, Any]:
    return {
        "id": str(entry.id),
        "account_id": str(entry.account_id),
        "kind": entry.kind,
        "amount": money_str(entry.amount),
        "reference": entry.reference,
        "created_at": entry.created_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


async def lock_account(session: AsyncSession, account_id: uuid.UUID) -> Account:
    """The account row, locked until the transaction ends, in its latest version: what every
    change of its money or its limits starts with."""
    account = await repository.lock_account(session, account_id)
    if account is None:
        raise NotFound(f"No account with id {account_id}", param="account_id")
    return account


async def set_key_limit(
    session: AsyncSession, account: Account, api_key_id: uuid.UUID, limit: SpendLimit | None
) -> None:
    """Set or remove a key's spend limit; `account` must be locked (`lock_account`). A new
    limit, or one of other periods, starts its counter from the key's events in the current
    period; a changed amount keeps it."""
    limits = dict(account.key_spend_limits)
    before = SpendLimit.from_stored(limits.get(str(api_key_id)))
    if limit is None:
        limits.pop(str(api_key_id), None)
        await repository.drop_counters(session, account.id, key_subject(api_key_id))
    else:
        limits[str(api_key_id)] = limit.stored()
        if not limit.same_periods(before):
            await repository.reset_key_counter(session, account.id, api_key_id, limit.stored())
    account.key_spend_limits = limits
    await session.flush()


async def set_user_limit(session: AsyncSession, account: Account, limit: SpendLimit | None) -> None:
    """The limit applied to each end user (`user`) of the account separately; as
    `set_key_limit`, with one counter per user."""
    before = SpendLimit.from_stored(account.user_spend_limit)
    if limit is None:
        await repository.drop_counters(session, account.id, "user:%")
    elif not limit.same_periods(before):
        await repository.reset_user_counters(session, account.id, limit.stored())
    account.user_spend_limit = None if limit is None else limit.stored()
    await session.flush()


async def key_period_spend(
    session: AsyncSession, account: Account, now: datetime
) -> dict[str, Decimal]:
    """Key id → its spend in the current period of its spend limit (keys with one), as the
    credit hold counts it."""
    counters = await repository.counters(session, account.id)
    spend: dict[str, Decimal] = {}
    for key_id, stored in account.key_spend_limits.items():
        limit = SpendLimit.from_stored(stored)
        start, _ = period_bounds(limit, now)
        counter = counters.get(key_subject(key_id))
        current = counter is not None and counter.period_start == start
        spend[key_id] = counter.spent if counter is not None and current else Decimal(0)
    return spend
