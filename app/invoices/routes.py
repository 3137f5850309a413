"""Invoice routes: the customer's invoices (SPEC 3.4) and the admin run (SPEC 5)."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, Router, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody
from sqlalchemy.ext.asyncio import AsyncSession

from app.accounts.auth import Principal
from app.admin.guards import require_admin
from app.audit import service as audit
from app.audit.service import ADMIN_TOKEN, Actor, AuditAction
from app.db.engine import unit_of_work
from app.errors import InvalidRequest
from app.invoices import repository, service, tasks
from app.invoices.schemas import RunInvoices
from app.payments.runtime import billing


@get("/v1/invoices")
async def list_invoices(
    principal: NamedDependency[Principal], db: NamedDependency[AsyncSession]
) -> dict[str, Any]:
    """Newest first, full invoice objects."""
    invoices = await repository.list_invoices(db, principal.account_id)
    return {"data": await service.views(db, invoices)}


@get("/v1/invoices/{invoice_id:str}")
async def get_invoice(
    invoice_id: FromPath[str],
    principal: NamedDependency[Principal],
    db: NamedDependency[AsyncSession],
) -> dict[str, Any]:
    invoice = await service.get_invoice(db, principal.account_id, invoice_id)
    return (await service.views(db, [invoice]))[0]


@get("/v1/invoices/{invoice_id:str}/pdf")
async def get_invoice_pdf(
    invoice_id: FromPath[str],
    principal: NamedDependency[Principal],
    db: NamedDependency[AsyncSession],
) -> Response[bytes]:
    invoice, content = await service.invoice_pdf(db, principal.account_id, invoice_id)
    return Response(
        content,
        media_type="application/pdf",
        headers={"content-disposition": f'inline; filename="{invoice.number}.pdf"'},
    )


@post("/run", status_code=200)
async def run_invoices(
    request: Request[Any, Any, Any], data: JSONBody[RunInvoices], state: State
) -> dict[str, Any]:
    """Run the monthly invoice job for `period` now, synchronously: 200 with all of the
    period's invoices; a second run issues none."""
    try:
        period = tasks.period_to_run(data.period)
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="period") from exc
    result = await tasks.run_invoices(state.sessionmaker, period, billing(state))
    if result.created:
        # Each invoice commits on its own (the job's unit of work is one account), so the
        # run is recorded once they have, with the numbers it issued.
        async with unit_of_work(state.sessionmaker) as db:
            await audit.record(
                db,
                Actor(ADMIN_TOKEN, request.client.host if request.client else None),
                AuditAction.INVOICES_RUN,
                object_id=period.label,
                after={"period": period.label, "issued": result.created},
            )
    return result.as_json()


invoice_routes = [list_invoices, get_invoice, get_invoice_pdf]
admin_invoice_routes = Router(
    path="/admin/invoices",
    guards=[require_admin],
    route_handlers=[run_invoices],
    include_in_schema=False,
)
