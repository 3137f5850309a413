"""Credit operations and the account view of SPEC 3.2. Never commits."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.credits import repository
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


def account_view(account: Account, tiers: TierTable) -> dict[str, Any]:
    tier = tiers.tier_for(account.total_purchased, account.total_usage)
    next_tier = tiers.next_tier(tier)
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
