"""Invoices across accounts by period and status, each as a page and as its PDF, and running a
period's invoices now (billing and admin), through the invoice job itself, audited as the
operator."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from litestar import Request, Response, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath
from litestar.response import Redirect
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit import service as audit
from app.audit.service import AuditAction
from app.console import repository
from app.console.render import flash, page
from app.console.schemas import Permission
from app.console.session import HOME, Staff
from app.db.engine import unit_of_work
from app.db.models import INVOICE_STATUSES
from app.errors import InvalidRequest, NotFound
from app.invoices import repository as invoices_repository
from app.invoices import service as invoices
from app.invoices import tasks
from app.invoices.compute import Period, parse_period, previous_period
from app.payments.runtime import billing


def _offset(value: str | None) -> int:
    try:
        return max(0, int(value or 0))
    except ValueError:
        return 0


@get("/invoices")
async def invoice_list(
    request: Request[Any, Any, Any],
    staff: NamedDependency[Staff],
    db: NamedDependency[AsyncSession],
) -> Response[str]:
    staff.require(Permission.READ)
    params = request.query_params
    error = None
    period_text = (params.get("period") or "").strip()
    period: Period | None = None
    if period_text:
        try:
            period = parse_period(period_text)
        except ValueError as exc:
            error, period_text = str(exc), ""
    status = (params.get("status") or "").strip()
    if status not in INVOICE_STATUSES:
        status = ""
    offset = _offset(params.get("offset"))
    rows = await repository.invoices(
        db,
        period_start=period.start if period else None,
        status=status or None,
        offset=offset,
        limit=repository.PAGE + 1,
    )
    return page(
        request,
        "console_invoices.html",
        staff=staff,
        nav="invoices",
        error=error,
        rows=rows[: repository.PAGE],
        has_more=len(rows) > repository.PAGE,
        period=period_text,
        status_filter=status,
        statuses=INVOICE_STATUSES,
        offset=offset,
        page_size=repository.PAGE,
        filters=urlencode({"period": period_text, "status": status}),
        run_default=previous_period(datetime.now(UTC)).label,
    )


def _account_id(account_id: str, invoice_id: str) -> uuid.UUID:
    """The path's account id; a malformed one is an unknown invoice, like a wrong one."""
    try:
        return uuid.UUID(account_id)
    except ValueError:
        raise NotFound(f"No invoice with id {invoice_id}") from None


@get("/invoices/{account_id:str}/{invoice_id:str}")
async def invoice_page(
    request: Request[Any, Any, Any],
    account_id: FromPath[str],
    invoice_id: FromPath[str],
    staff: NamedDependency[Staff],
    db: NamedDependency[AsyncSession],
) -> Response[str]:
    staff.require(Permission.READ)
    invoice = await invoices.get_invoice(db, _account_id(account_id, invoice_id), invoice_id)
    lines = await invoices_repository.lines_of(db, [invoice])
    return page(
        request,
        "console_invoice.html",
        staff=staff,
        nav="invoices",
        invoice=invoice,
        lines=lines.get((invoice.account_id, invoice.id), []),
    )


@get("/invoices/{account_id:str}/{invoice_id:str}/pdf")
async def invoice_pdf(
    account_id: FromPath[str],
    invoice_id: FromPath[str],
    staff: NamedDependency[Staff],
    db: NamedDependency[AsyncSession],
) -> Response[bytes]:
    staff.require(Permission.READ)
    wanted = _account_id(account_id, invoice_id)
    invoice, content = await invoices.invoice_pdf(db, wanted, invoice_id)
    return Response(
        content,
        media_type="application/pdf",
        headers={"content-disposition": f'inline; filename="{invoice.number}.pdf"'},
    )


@post("/invoices/run", status_code=200)
async def run_period(
    request: Request[Any, Any, Any], staff: NamedDependency[Staff], state: State
) -> Response[Any]:
    staff.require(Permission.INVOICES)
    form = await request.form()
    try:
        period = tasks.period_to_run(str(form.get("period") or ""))
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="period") from exc
    result = await tasks.run_invoices(state.sessionmaker, period, billing(state))
    if result.created:
        # As the admin API's run: each invoice commits on its own (one account per unit of
        # work), so the run is recorded once they have, with the numbers it issued.
        async with unit_of_work(state.sessionmaker) as db:
            await audit.record(
                db,
                staff.actor,
                AuditAction.INVOICES_RUN,
                object_id=period.label,
                after={"period": period.label, "issued": result.created},
            )
    flash(
        request,
        f"{period.label}: {len(result.created)} invoices issued now, "
        f"{len(result.invoices)} in total.",
    )
    return Redirect(f"{HOME}/invoices?{urlencode({'period': period.label})}", status_code=303)
