"""All SQL of invoices: usage aggregation, numbering, storage and reads."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal

from sqlalchemy import select, text, tuple_
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import Account, Invoice, InvoiceCounter, InvoiceLine
from app.invoices.compute import Line, UsageAggregate


async def lock_account(session: AsyncSession, account_id: uuid.UUID) -> None:
    """Serialise invoicing of one account (until commit) without locking its row, which the
    request path updates all the time."""
    await session.execute(
        text("SELECT pg_advisory_xact_lock(hashtextextended('tollgate:invoice:' || :id, 0))"),
        {"id": str(account_id)},
    )


async def get_account(session: AsyncSession, account_id: uuid.UUID) -> Account | None:
    return await session.get(Account, account_id)


async def latest_invoice(session: AsyncSession, account_id: uuid.UUID) -> Invoice | None:
    return await session.scalar(
        select(Invoice)
        .where(Invoice.account_id == account_id)
        .order_by(Invoice.period_end.desc())
        .limit(1)
    )


# The usage an invoice covers: events of its period or earlier, ingested before its cutoff,
# minus what the account's previous invoice covered (events before that invoice's period end
# ingested before its cutoff). The two disjoint parts each use an index: (account_id, time)
# for the new months and (account_id, ingested_at) for late arrivals in invoiced months.
# Events stored without itemised lines count as one "usage" line of their cost.
AGGREGATE_SQL = text(
    """
    WITH events AS (
        SELECT e.time, e.model, e.cost, e.charge FROM usage_events e
        WHERE e.account_id = :account_id
          AND e.time >= :previous_end AND e.time < :period_end
          AND e.ingested_at < :cutoff
        UNION ALL
        SELECT e.time, e.model, e.cost, e.charge FROM usage_events e
        WHERE e.account_id = :account_id
          AND e.time < :previous_end
          AND e.ingested_at >= :previous_cutoff AND e.ingested_at < :cutoff
    ), items AS (
        SELECT date_trunc('month', ev.time AT TIME ZONE 'UTC')::date AS service_month,
               ev.model,
               l.value ->> 'kind' AS kind,
               (l.value ->> 'unit_price')::numeric AS unit_price,
               (l.value ->> 'per')::bigint AS per,
               (l.value ->> 'quantity')::bigint AS quantity,
               (l.value ->> 'amount')::numeric AS amount
        FROM events ev
        CROSS JOIN LATERAL jsonb_array_elements(
            CASE jsonb_typeof(ev.charge)
                WHEN 'array' THEN ev.charge
                ELSE coalesce(ev.charge -> 'lines', '[]'::jsonb)
            END
        ) AS l(value)
        UNION ALL
        SELECT date_trunc('month', ev.time AT TIME ZONE 'UTC')::date, ev.model,
               'usage', NULL::numeric, 1, 1, ev.cost
        FROM events ev
        WHERE ev.cost <> 0
          AND jsonb_array_length(
                CASE jsonb_typeof(ev.charge)
                    WHEN 'array' THEN ev.charge
                    ELSE coalesce(ev.charge -> 'lines', '[]'::jsonb)
                END) = 0
    )
    SELECT service_month, model, kind,
           coalesce(unit_price, sum(amount)) AS unit_price,
           per,
           CASE WHEN unit_price IS NULL THEN 1 ELSE sum(quantity) END AS quantity,
           sum(amount) AS amount_exact
    FROM items
    GROUP BY service_month, model, kind, unit_price, per
    """
)


async def aggregate_usage(
    session: AsyncSession,
    *,
    account_id: uuid.UUID,
    period_end: datetime,
    cutoff: datetime,
    previous: Invoice | None,
) -> list[UsageAggregate]:
    far_past = datetime(1970, 1, 1, tzinfo=period_end.tzinfo)
    result = await session.execute(
        AGGREGATE_SQL,
        {
            "account_id": account_id,
            "period_end": period_end,
            "cutoff": cutoff,
            "previous_end": previous.period_end if previous else far_past,
            "previous_cutoff": previous.usage_cutoff if previous else far_past,
        },
    )
    return [
        UsageAggregate(
            service_month=row.service_month,
            model=row.model,
            kind=row.kind,
            unit_price=Decimal(row.unit_price),
            per=int(row.per),
            quantity=int(row.quantity),
            amount_exact=Decimal(row.amount_exact),
        )
        for row in result
    ]


ACCOUNTS_SQL = text(
    """
    SELECT a.id FROM accounts a
    LEFT JOIN LATERAL (
        SELECT i.period_end, i.usage_cutoff FROM invoices i
        WHERE i.account_id = a.id ORDER BY i.period_end DESC LIMIT 1
    ) p ON true
    WHERE (p.period_end IS NULL OR p.period_end < :period_end)
      AND (
        EXISTS (SELECT 1 FROM usage_events e
                WHERE e.account_id = a.id
                  AND e.time >= coalesce(p.period_end, '-infinity') AND e.time < :period_end)
        OR EXISTS (SELECT 1 FROM usage_events e
                   WHERE e.account_id = a.id AND e.time < p.period_end
                     AND e.ingested_at >= p.usage_cutoff)
      )
    ORDER BY a.created_at, a.id
    """
)


async def accounts_with_uninvoiced_usage(
    session: AsyncSession, period_end: datetime
) -> list[uuid.UUID]:
    """Accounts with usage up to `period_end` that no invoice covers yet (a superset: the
    per-account transaction decides with its own cutoff)."""
    result = await session.execute(ACCOUNTS_SQL, {"period_end": period_end})
    return [row.id for row in result]


async def next_number(session: AsyncSession, year: int) -> int:
    """The year's next invoice number. The counter row stays locked until the transaction
    ends, so numbers are handed out in commit order and a rollback returns its number."""
    number = await session.scalar(
        insert(InvoiceCounter)
        .values(year=year, last_number=1)
        .on_conflict_do_update(
            index_elements=["year"],
            set_={"last_number": InvoiceCounter.last_number + 1},
        )
        .returning(InvoiceCounter.last_number)
    )
    assert number is not None
    return int(number)


async def insert_invoice(session: AsyncSession, invoice: Invoice, lines: Sequence[Line]) -> None:
    session.add(invoice)
    await session.flush()
    if lines:
        await session.execute(
            insert(InvoiceLine),
            [
                {
                    "account_id": invoice.account_id,
                    "invoice_id": invoice.id,
                    "position": position,
                    "description": line.description,
                    "model": line.model,
                    "kind": line.kind,
                    "service_month": line.service_month,
                    "quantity": line.quantity,
                    "unit_price": line.unit_price,
                    "per": line.per,
                    "amount_exact": line.amount_exact,
                    "amount": line.amount,
                }
                for position, line in enumerate(lines, start=1)
            ],
        )


async def get_invoice(
    session: AsyncSession, account_id: uuid.UUID, invoice_id: uuid.UUID
) -> Invoice | None:
    return await session.get(Invoice, (account_id, invoice_id))


async def list_invoices(session: AsyncSession, account_id: uuid.UUID) -> list[Invoice]:
    """Newest first."""
    result = await session.scalars(
        select(Invoice)
        .where(Invoice.account_id == account_id)
        .order_by(Invoice.period_start.desc(), Invoice.issued_at.desc())
    )
    return list(result)


async def invoices_of_period(session: AsyncSession, period_start: datetime) -> list[Invoice]:
    result = await session.scalars(
        select(Invoice).where(Invoice.period_start == period_start).order_by(Invoice.number)
    )
    return list(result)


async def lines_of(
    session: AsyncSession, invoices: Sequence[Invoice]
) -> dict[tuple[uuid.UUID, uuid.UUID], list[InvoiceLine]]:
    """Lines of several invoices in one query, in position order."""
    if not invoices:
        return {}
    keys = [(i.account_id, i.id) for i in invoices]
    result = await session.scalars(
        select(InvoiceLine)
        .where(tuple_(InvoiceLine.account_id, InvoiceLine.invoice_id).in_(keys))
        .order_by(InvoiceLine.account_id, InvoiceLine.invoice_id, InvoiceLine.position)
    )
    grouped: dict[tuple[uuid.UUID, uuid.UUID], list[InvoiceLine]] = defaultdict(list)
    for line in result:
        grouped[(line.account_id, line.invoice_id)].append(line)
    return grouped
