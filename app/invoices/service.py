"""Issuing an account's monthly invoice, and the invoice as JSON (SPEC 3.4). Never commits.

An invoice is issued final, with its number, after the month's grace period. Each invoice
covers the account's usage up to its period end that was ingested before its cutoff and not
covered by the previous invoice, so usage that arrives after an invoice is final lands on the
next one, as lines labelled with its month, and nothing is billed twice or lost.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.db import job_state
from app.db.models import Invoice, InvoiceLine
from app.errors import NotFound
from app.invoices import repository
from app.invoices.compute import (
    Line,
    Period,
    build_lines,
    invoice_number,
    per_unit,
    totals,
)
from app.invoices.pdf import render_pdf
from app.money import money_str
from app.notifications import service as notifications
from app.notifications.schemas import EventType
from app.payments.config import Seller

logger = logging.getLogger(__name__)

STUCK_TRANSACTION = timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class Issued:
    invoice: Invoice
    lines: list[Line]


async def issue_invoice(
    session: AsyncSession, account_id: uuid.UUID, period: Period, seller: Seller
) -> Issued | None:
    """The account's invoice for `period`, or None when there is nothing to invoice: already
    invoiced (this or a later month), or no uncovered usage. Idempotent: the account is
    locked for the transaction and (account_id, period_start) is unique."""
    await repository.lock_account(session, account_id)
    previous = await repository.latest_invoice(session, account_id)
    if previous is not None and previous.period_end >= period.end:
        return None
    # The ingestion bound of the invoice (`ingested_at` is the inserting transaction's start),
    # read before the aggregation, whose snapshot then sees everything stamped before it.
    cutoff, now = await job_state.settled_horizon(session, lag_seconds=0)
    if now - cutoff > STUCK_TRANSACTION:
        # Nothing is lost (later usage goes on the next invoice), but an operator should know.
        logger.warning(
            "a database transaction open since %s holds back the usage cutoff of invoices",
            cutoff.isoformat(),
        )
    account = await repository.get_account(session, account_id)
    if account is None:
        return None
    aggregates = await repository.aggregate_usage(
        session, account_id=account_id, period_end=period.end, cutoff=cutoff, previous=previous
    )
    if not aggregates:
        return None
    lines = build_lines(aggregates, period, account.currency)
    total = totals(lines)
    # Last, so the counter row is locked for as short a time as possible.
    sequence = await repository.next_number(session, now.year)
    invoice = Invoice(
        account_id=account_id,
        id=uuid.uuid4(),
        number=invoice_number(now.year, sequence),
        period_start=period.start,
        period_end=period.end,
        currency=account.currency,
        status="final",
        subtotal=total.subtotal,
        credits_applied=total.credits_applied,
        amount_due=total.amount_due,
        issued_at=now,
        usage_cutoff=cutoff,
        customer={"account_id": str(account.id), "name": account.name, "email": account.email},
        seller=seller.as_json(),
    )
    await repository.insert_invoice(session, invoice, lines)
    await notifications.emit(
        session,
        account_id,
        EventType.INVOICE_FINALIZED,
        {
            "invoice_id": str(invoice.id),
            "number": invoice.number,
            "amount_due": invoice.amount_due,
            "currency": invoice.currency,
        },
    )
    return Issued(invoice, lines)


async def get_invoice(session: AsyncSession, account_id: uuid.UUID, invoice_id: str) -> Invoice:
    """The account's invoice; 404 for an unknown id or another account's invoice alike."""
    try:
        parsed = uuid.UUID(invoice_id)
    except ValueError:
        parsed = None
    invoice = await repository.get_invoice(session, account_id, parsed) if parsed else None
    if invoice is None:
        raise NotFound(f"No invoice with id {invoice_id}", param="id")
    return invoice


async def invoice_pdf(
    session: AsyncSession, account_id: uuid.UUID, invoice_id: str
) -> tuple[Invoice, bytes]:
    """The account's invoice and its PDF (for the API and the dashboard alike)."""
    invoice = await get_invoice(session, account_id, invoice_id)
    lines = await repository.lines_of(session, [invoice])
    return invoice, render_pdf(invoice, lines.get((invoice.account_id, invoice.id), []))


async def views(session: AsyncSession, invoices: list[Invoice]) -> list[dict[str, Any]]:
    lines = await repository.lines_of(session, invoices)
    return [invoice_view(i, lines.get((i.account_id, i.id), [])) for i in invoices]


def _time(value: Any) -> str:
    return str(value.strftime("%Y-%m-%dT%H:%M:%SZ"))


def line_view(line: InvoiceLine) -> dict[str, Any]:
    return {
        "description": line.description,
        "model": line.model,
        "kind": line.kind,
        "quantity": line.quantity,
        # Per single unit (one token, one request), so quantity × unit_price is the exact
        # amount before rounding.
        "unit_price": money_str(per_unit(line.unit_price, line.per)),
        "amount": money_str(line.amount),
    }


def invoice_view(invoice: Invoice, lines: list[InvoiceLine]) -> dict[str, Any]:
    return {
        "id": str(invoice.id),
        "number": invoice.number,
        "period_start": _time(invoice.period_start),
        "period_end": _time(invoice.period_end),
        "currency": invoice.currency,
        "status": invoice.status,
        "lines": [line_view(line) for line in lines],
        "subtotal": money_str(invoice.subtotal),
        "credits_applied": money_str(invoice.credits_applied),
        "amount_due": money_str(invoice.amount_due),
        "issued_at": _time(invoice.issued_at),
    }
