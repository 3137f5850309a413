"""The account's invoices: the list, one invoice as a page, and its PDF."""

from __future__ import annotations

import logging
from typing import Any

from litestar import Request, Response, get
from litestar.di import NamedDependency
from litestar.params import FromPath
from sqlalchemy.ext.asyncio import AsyncSession

from app.dashboard.session import (
    Viewer,
    viewer_page,
)
from app.invoices import repository as invoices_repository
from app.invoices import service as invoices

logger = logging.getLogger(__name__)


# ── invoices ────────────────────────────────────────────────────────────────────────────────


@get("/invoices")
async def invoice_list(
    request: Request[Any, Any, Any],
    viewer: NamedDependency[Viewer],
    db: NamedDependency[AsyncSession],
) -> Response[str]:
    found = await invoices_repository.list_invoices(db, viewer.account_id)
    return viewer_page(request, viewer, "invoices.html", "invoices", invoices=found)


@get("/invoices/{invoice_id:str}")
async def invoice_page(
    request: Request[Any, Any, Any],
    invoice_id: FromPath[str],
    viewer: NamedDependency[Viewer],
    db: NamedDependency[AsyncSession],
) -> Response[str]:
    invoice = await invoices.get_invoice(db, viewer.account_id, invoice_id)
    lines = await invoices_repository.lines_of(db, [invoice])
    return viewer_page(
        request,
        viewer,
        "invoice.html",
        "invoices",
        invoice=invoice,
        lines=lines.get((invoice.account_id, invoice.id), []),
    )


@get("/invoices/{invoice_id:str}/pdf")
async def invoice_pdf(
    invoice_id: FromPath[str],
    viewer: NamedDependency[Viewer],
    db: NamedDependency[AsyncSession],
) -> Response[bytes]:
    invoice, content = await invoices.invoice_pdf(db, viewer.account_id, invoice_id)
    return Response(
        content,
        media_type="application/pdf",
        headers={"content-disposition": f'attachment; filename="{invoice.number}.pdf"'},
    )
