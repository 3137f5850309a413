"""`POST /v1/usage/completions` (a customer's own usage) and `POST /admin/usage/completions`
(across accounts, with `user_id` as a group-by and filter field)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from litestar import Request, post
from litestar.di import NamedDependency
from sqlalchemy.ext.asyncio import AsyncSession

from app.accounts.auth import Principal
from app.admin.guards import require_admin
from app.pricing import Catalog
from app.usage import service
from app.usage.schemas import ADMIN_GROUP_FIELDS, GROUP_FIELDS, parse_usage_query


@post("/v1/usage/completions", status_code=200)
async def usage_completions(
    request: Request[Any, Any, Any],
    principal: NamedDependency[Principal],
    db: NamedDependency[AsyncSession],
    catalog: NamedDependency[Catalog],
) -> dict[str, Any]:
    """Usage of the key's account per window (and group). The body is read raw, so that each
    invalid field gets a 400 that names it."""
    query = parse_usage_query(await request.body(), fields=GROUP_FIELDS, now=datetime.now(UTC))
    return await service.usage_report(db, query, catalog=catalog, account_id=principal.account_id)


@post("/admin/usage/completions", status_code=200, guards=[require_admin], include_in_schema=False)
async def admin_usage_completions(
    request: Request[Any, Any, Any],
    db: NamedDependency[AsyncSession],
    catalog: NamedDependency[Catalog],
) -> dict[str, Any]:
    query = parse_usage_query(
        await request.body(), fields=ADMIN_GROUP_FIELDS, now=datetime.now(UTC)
    )
    return await service.usage_report(db, query, catalog=catalog, account_id=None, with_margin=True)


usage_routes = [usage_completions, admin_usage_completions]
