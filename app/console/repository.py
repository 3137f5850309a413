"""The console's reads across domains (each is one query, read-only): account search, the
ledger with its running balance, the overview's figures. Writes go through each domain's
services, never here."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

PAGE = 50


@dataclass(frozen=True, slots=True)
class AccountRow:
    id: uuid.UUID
    name: str
    email: str | None
    currency: str
    balance: Decimal
    held: Decimal
    month_spend: Decimal
    suspended: bool
    created_at: datetime


_SORTS = {
    "balance": "a.balance DESC, a.id",
    "spend": "month_spend DESC, a.id",
    "name": "lower(a.name), a.id",
    "newest": "a.created_at DESC, a.id",
}

# The month's spend from the hourly rollups (at most a minute behind the events): a list
# across accounts, not a statement of account.
ACCOUNTS_SQL = """
    SELECT a.id, a.name, a.email, a.currency, a.balance, a.held,
           a.suspended_at IS NOT NULL AS suspended, a.created_at,
           coalesce((SELECT sum(r.cost) FROM usage_rollups r
                     WHERE r.account_id = a.id AND r.bucket_minutes = 60
                       AND r.bucket >= :month_start), 0) AS month_spend
    FROM accounts a
    WHERE (CAST(:q AS text) IS NULL
           OR a.name ILIKE :like OR a.email ILIKE :like OR CAST(a.id AS text) = lower(:q)
           OR EXISTS (SELECT 1 FROM api_keys k WHERE k.account_id = a.id
                      AND k.prefix LIKE :prefix))
    ORDER BY {order}
    LIMIT :limit OFFSET :offset
"""


def _like(q: str) -> str:
    return "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


async def accounts(
    session: AsyncSession,
    *,
    q: str | None,
    sort: str,
    month_start: datetime,
    offset: int = 0,
    limit: int = PAGE,
) -> list[AccountRow]:
    order = _SORTS.get(sort, _SORTS["newest"])
    rows = await session.execute(
        text(ACCOUNTS_SQL.format(order=order)),
        {
            "q": q,
            "like": _like(q) if q else None,
            "prefix": (q.replace("\\", "").replace("%", "").replace("_", "\\_") + "%")
            if q
            else None,
            "month_start": month_start,
            "limit": limit,
            "offset": offset,
        },
    )
    return [AccountRow(**row._mapping) for row in rows]


@dataclass(frozen=True, slots=True)
class LedgerRow:
    id: uuid.UUID
    created_at: datetime
    kind: str
    amount: Decimal
    balance_after: Decimal
    reference: str
    description: str | None


# Newest first; each entry's balance after it is the account's balance less every newer entry,
# so a page costs its own rows plus the sum of the entries above it (an index range).
LEDGER_SQL = text(
    """
    WITH newer AS (
        SELECT coalesce(sum(amount), 0) AS total FROM ledger_entries
        WHERE account_id = :account_id AND CAST(:before_at AS timestamptz) IS NOT NULL
          AND (created_at, id) >= (:before_at, :before_id)
    ), page AS (
        SELECT id, created_at, kind, amount, reference, description FROM ledger_entries
        WHERE account_id = :account_id
          AND (CAST(:before_at AS timestamptz) IS NULL
               OR (created_at, id) < (:before_at, :before_id))
        ORDER BY created_at DESC, id DESC
        LIMIT :limit
    )
    SELECT p.id, p.created_at, p.kind, p.amount, p.reference, p.description,
           a.balance - (SELECT total FROM newer)
               - coalesce(sum(p.amount) OVER (
                   ORDER BY p.created_at DESC, p.id DESC
                   ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS balance_after
    FROM page p, accounts a WHERE a.id = :account_id
    ORDER BY p.created_at DESC, p.id DESC
    """
)


async def ledger(
    session: AsyncSession,
    account_id: uuid.UUID,
    *,
    before: tuple[datetime, uuid.UUID] | None,
    limit: int = PAGE,
) -> list[LedgerRow]:
    rows = await session.execute(
        LEDGER_SQL,
        {
            "account_id": account_id,
            "before_at": before[0] if before else None,
            "before_id": before[1] if before else uuid.UUID(int=0),
            "limit": limit,
        },
    )
    return [LedgerRow(**row._mapping) for row in rows]


async def ledger_entry_time(
    session: AsyncSession, account_id: uuid.UUID, entry_id: uuid.UUID
) -> datetime | None:
    at: datetime | None = await session.scalar(
        text("SELECT created_at FROM ledger_entries WHERE account_id = :a AND id = :i"),
        {"a": account_id, "i": entry_id},
    )
    return at


async def usage_by_model(
    session: AsyncSession, account_id: uuid.UUID | None, since: datetime
) -> list[tuple[str, int, Decimal]]:
    """(model, requests, cost) since `since`, largest cost first, from the hourly rollups."""
    rows = await session.execute(
        text(
            """
            SELECT model, sum(requests)::bigint AS requests, sum(cost) AS cost
            FROM usage_rollups
            WHERE bucket_minutes = 60 AND bucket >= :since
              AND (CAST(:account_id AS uuid) IS NULL OR account_id = :account_id)
            GROUP BY model ORDER BY cost DESC LIMIT 20
            """
        ),
        {"account_id": account_id, "since": since},
    )
    return [(r.model, r.requests, r.cost) for r in rows]


async def top_accounts(
    session: AsyncSession, since: datetime, limit: int = 10
) -> list[tuple[uuid.UUID, str, Decimal]]:
    rows = await session.execute(
        text(
            """
            SELECT a.id, a.name, sum(r.cost) AS cost FROM usage_rollups r
            JOIN accounts a ON a.id = r.account_id
            WHERE r.bucket_minutes = 60 AND r.bucket >= :since
            GROUP BY a.id, a.name ORDER BY cost DESC LIMIT :limit
            """
        ),
        {"since": since, "limit": limit},
    )
    return [(r.id, r.name, r.cost) for r in rows]


async def today_requests(session: AsyncSession, since: datetime) -> tuple[int, int, int]:
    """(requests, not completed, accounts with usage) since `since`, from the events."""
    row = (
        await session.execute(
            text(
                """
                SELECT count(*) AS requests,
                       count(*) FILTER (WHERE outcome <> 'completed') AS errors,
                       count(DISTINCT account_id) AS accounts
                FROM usage_events WHERE time >= :since
                """
            ),
            {"since": since},
        )
    ).one()
    return int(row.requests), int(row.errors), int(row.accounts)


async def jobs(session: AsyncSession) -> Sequence[Any]:
    return (
        await session.execute(text("SELECT name, ran_at, result FROM job_state ORDER BY name"))
    ).all()


async def failing_endpoints(session: AsyncSession, since: datetime) -> Sequence[Any]:
    """Endpoints with failed deliveries, or pending ones that failed an attempt, since then."""
    return (
        await session.execute(
            text(
                """
                SELECT w.id, w.url, count(*) AS failing, max(d.last_error) AS last_error
                FROM notification_deliveries d JOIN webhook_endpoints w ON w.id = d.endpoint_id
                WHERE w.deleted_at IS NULL AND d.created_at >= :since
                  AND (d.status = 'failed' OR (d.status = 'pending' AND d.attempts > 0))
                GROUP BY w.id, w.url ORDER BY failing DESC
                """
            ),
            {"since": since},
        )
    ).all()


async def payments(session: AsyncSession, account_id: uuid.UUID) -> Sequence[Any]:
    return (
        await session.execute(
            text(
                """
                SELECT payment_intent_id, source, currency, amount_minor, refunded_minor,
                       created_at
                FROM stripe_payments WHERE account_id = :a ORDER BY created_at DESC LIMIT 50
                """
            ),
            {"a": account_id},
        )
    ).all()


async def account_names(
    session: AsyncSession, account_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, str]:
    """id → name of the given accounts, in one query."""
    if not account_ids:
        return {}
    rows = await session.execute(
        text("SELECT id, name FROM accounts WHERE id = ANY(CAST(:ids AS uuid[]))"),
        {"ids": list(set(account_ids))},
    )
    return {r.id: r.name for r in rows}


@dataclass(frozen=True, slots=True)
class InvoiceRow:
    account_id: uuid.UUID
    id: uuid.UUID
    account_name: str
    number: str
    period_start: datetime
    status: str
    currency: str
    subtotal: Decimal
    credits_applied: Decimal
    amount_due: Decimal
    issued_at: datetime


async def invoices(
    session: AsyncSession,
    *,
    period_start: datetime | None,
    status: str | None,
    offset: int = 0,
    limit: int = PAGE,
) -> list[InvoiceRow]:
    """Invoices across accounts, of one period and status if given: newest period first, then
    by number."""
    rows = await session.execute(
        text(
            """
            SELECT i.account_id, i.id, a.name AS account_name, i.number, i.period_start,
                   i.status, i.currency, i.subtotal, i.credits_applied, i.amount_due,
                   i.issued_at
            FROM invoices i JOIN accounts a ON a.id = i.account_id
            WHERE (CAST(:period_start AS timestamptz) IS NULL
                   OR i.period_start = :period_start)
              AND (CAST(:status AS text) IS NULL OR i.status = :status)
            ORDER BY i.period_start DESC, i.number DESC
            LIMIT :limit OFFSET :offset
            """
        ),
        {"period_start": period_start, "status": status, "limit": limit, "offset": offset},
    )
    return [InvoiceRow(**row._mapping) for row in rows]
