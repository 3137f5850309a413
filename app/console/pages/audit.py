"""The audit log with its filters, and the operators page (admin only)."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath
from litestar.response import Redirect
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit import service as audit
from app.audit.service import AuditAction
from app.console import operators
from app.console.render import flash, page
from app.console.schemas import OperatorRole, Permission
from app.console.session import HOME, Staff
from app.db.engine import unit_of_work
from app.db.models import Operator
from app.errors import InvalidRequest, NotFound


@get("/audit")
async def audit_page(
    request: Request[Any, Any, Any],
    staff: NamedDependency[Staff],
    db: NamedDependency[AsyncSession],
) -> Response[str]:
    staff.require(Permission.READ)
    params = request.query_params
    filters = {
        name: (params.get(name) or "").strip() or None
        for name in ("actor", "action", "account_id", "before")
    }
    log = await audit.audit_page(db, **filters)  # type: ignore[arg-type]
    return page(
        request,
        "console_audit.html",
        staff=staff,
        nav="audit",
        log=log,
        filters={k: v or "" for k, v in filters.items()},
        actions=list(AuditAction),
    )


@get("/operators")
async def operators_page(
    request: Request[Any, Any, Any],
    staff: NamedDependency[Staff],
    db: NamedDependency[AsyncSession],
) -> Response[str]:
    staff.require(Permission.OPERATORS)
    return page(
        request,
        "console_operators.html",
        staff=staff,
        nav="operators",
        operators=await operators.list_operators(db),
        roles=list(OperatorRole),
        link=None,
    )


@post("/operators", status_code=200)
async def create_operator(
    request: Request[Any, Any, Any], staff: NamedDependency[Staff], state: State
) -> Response[Any]:
    staff.require(Permission.OPERATORS)
    form = await request.form()
    try:
        role = OperatorRole(str(form.get("role") or ""))
    except ValueError:
        raise InvalidRequest("role must be viewer, billing or admin", param="role") from None
    async with unit_of_work(state.sessionmaker) as db:
        operator, link = await operators.create_operator(
            db, str(form.get("email") or ""), role, state.settings.resolved_public_url
        )
        await audit.record(
            db,
            staff.actor,
            AuditAction.OPERATOR_CREATED,
            object_id=operator.id,
            after={"email": operator.email, "role": operator.role},
        )
    async with unit_of_work(state.sessionmaker) as db:
        listed = await operators.list_operators(db)
    # The link is shown once, in this response only.
    return page(
        request,
        "console_operators.html",
        staff=staff,
        nav="operators",
        operators=listed,
        roles=list(OperatorRole),
        link=(operator.email, link),
    )


@post("/operators/{operator_id:str}/disable", status_code=200)
async def disable_operator(
    request: Request[Any, Any, Any],
    operator_id: FromPath[str],
    staff: NamedDependency[Staff],
    state: State,
) -> Response[Any]:
    staff.require(Permission.OPERATORS)
    import uuid
    from datetime import UTC, datetime

    try:
        wanted = uuid.UUID(operator_id)
    except ValueError:
        raise NotFound("No such operator") from None
    if wanted == staff.id:
        raise InvalidRequest("You cannot disable yourself.")
    async with unit_of_work(state.sessionmaker) as db:
        operator = await db.get(Operator, wanted, with_for_update=True)
        if operator is None:
            raise NotFound("No such operator")
        if operator.disabled_at is None:
            operator.disabled_at = datetime.now(UTC)
            await audit.record(
                db,
                staff.actor,
                AuditAction.OPERATOR_DISABLED,
                object_id=operator.id,
                after={"email": operator.email},
            )
    flash(request, f"Disabled {operator.email}: their sessions end at once.")
    return Redirect(f"{HOME}/operators", status_code=303)
