"""The overview (balance, tier, 30-day chart) and a month's usage by model and day, with CSV."""

from __future__ import annotations

import csv
import io
import logging
from datetime import UTC, datetime
from typing import Any

from litestar import Request, Response, get
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.exceptions import (
    ValidationException,
)
from sqlalchemy.ext.asyncio import AsyncSession

from app.dashboard import service
from app.dashboard.session import (
    Viewer,
    viewer_page,
)
from app.pricing import Catalog

logger = logging.getLogger(__name__)


# ── overview and usage ──────────────────────────────────────────────────────────────────────


@get("/")
async def overview(
    request: Request[Any, Any, Any],
    viewer: NamedDependency[Viewer],
    db: NamedDependency[AsyncSession],
    catalog: NamedDependency[Catalog],
    state: State,
) -> Response[str]:
    data = await service.overview(
        db,
        account_id=viewer.account_id,
        tiers=state.tiers,
        catalog=catalog,
        now=datetime.now(UTC),
    )
    return viewer_page(request, viewer, "overview.html", "overview", o=data)


@get("/usage")
async def usage(
    request: Request[Any, Any, Any],
    viewer: NamedDependency[Viewer],
    db: NamedDependency[AsyncSession],
    catalog: NamedDependency[Catalog],
) -> Response[str]:
    now = datetime.now(UTC)
    error = None
    try:
        month = service.parse_month(request.query_params.get("month"), now.date())
    except ValueError as exc:
        error, month = str(exc), now.date().replace(day=1)
    data = await service.month_usage(db, catalog, viewer.account_id, month, now)
    return viewer_page(
        request,
        viewer,
        "usage.html",
        "usage",
        u=data,
        error=error,
        previous=service.previous_month(month),
        following=service.next_month(month),
        current_month=now.date().replace(day=1),
    )


@get("/usage.csv")
async def usage_csv(
    request: Request[Any, Any, Any],
    viewer: NamedDependency[Viewer],
    db: NamedDependency[AsyncSession],
    catalog: NamedDependency[Catalog],
) -> Response[str]:
    now = datetime.now(UTC)
    try:
        month = service.parse_month(request.query_params.get("month"), now.date())
    except ValueError as exc:
        raise ValidationException(str(exc)) from None
    data = await service.month_usage(db, catalog, viewer.account_id, month, now)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(service.CSV_COLUMNS)
    writer.writerows(service.csv_records(data.rows))
    name = f"tollgate-usage-{month:%Y-%m}.csv"
    return Response(
        out.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={"content-disposition": f'attachment; filename="{name}"'},
    )
