"""Webhook endpoints (SPEC 11): each with its recent deliveries and every attempt (time,
status, latency, error), "retry now" per delivery, and creating (the signing secret shown
once) and deleting endpoints. Changes need the webhooks permission (admin) and go through
the notifications service, as the admin API's do, audited as the operator."""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

import msgspec
from litestar import Request, Response, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath
from litestar.response import Redirect
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit import service as audit
from app.audit.service import AuditAction
from app.console.render import flash, page
from app.console.schemas import Permission
from app.console.session import HOME, Staff
from app.db.engine import unit_of_work
from app.db.models import WebhookEndpoint
from app.errors import InvalidRequest, NotFound
from app.notifications import repository as notifications_repository
from app.notifications import service as notifications
from app.notifications.schemas import CreateEndpoint, EventType

RECENT = 10  # deliveries per endpoint on the list; its own page shows all that are kept


@dataclass(frozen=True, slots=True)
class EndpointView:
    endpoint: WebhookEndpoint
    deliveries: list[dict[str, Any]]  # newest first, as the admin API lists them
    statuses: dict[str, int]  # of the deliveries listed


async def _endpoint_view(db: AsyncSession, endpoint: WebhookEndpoint) -> EndpointView:
    deliveries: list[dict[str, Any]] = (await notifications.deliveries_view(db, endpoint.id))[
        "data"
    ]
    return EndpointView(endpoint, deliveries, dict(Counter(d["status"] for d in deliveries)))


async def _list_page(
    request: Request[Any, Any, Any],
    staff: Staff,
    db: AsyncSession,
    *,
    created: tuple[WebhookEndpoint, str] | None = None,
    status: int = 200,
) -> Response[str]:
    endpoints = [
        await _endpoint_view(db, e) for e in await notifications_repository.list_endpoints(db)
    ]
    return page(
        request,
        "console_webhooks.html",
        status=status,
        staff=staff,
        nav="webhooks",
        endpoints=endpoints,
        recent=RECENT,
        event_types=list(EventType),
        created=created,
    )


def _parse_id(value: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise NotFound(f"No {what} with id {value}") from None


@get("/webhooks")
async def webhooks_page(
    request: Request[Any, Any, Any],
    staff: NamedDependency[Staff],
    db: NamedDependency[AsyncSession],
) -> Response[str]:
    staff.require(Permission.READ)
    return await _list_page(request, staff, db)


@get("/webhooks/{endpoint_id:str}")
async def endpoint_page(
    request: Request[Any, Any, Any],
    endpoint_id: FromPath[str],
    staff: NamedDependency[Staff],
    db: NamedDependency[AsyncSession],
) -> Response[str]:
    staff.require(Permission.READ)
    endpoint = await notifications.get_endpoint(db, _parse_id(endpoint_id, "webhook endpoint"))
    return page(
        request,
        "console_webhook.html",
        staff=staff,
        nav="webhooks",
        e=await _endpoint_view(db, endpoint),
        limit=notifications.MAX_DELIVERIES_LISTED,
    )


@post("/webhooks", status_code=200)
async def create_endpoint(
    request: Request[Any, Any, Any], staff: NamedDependency[Staff], state: State
) -> Response[Any]:
    staff.require(Permission.WEBHOOKS)
    form = await request.form()
    events = [str(v) for v in form.getall("events")] if "events" in form else []
    description = str(form.get("description") or "").strip()
    try:
        data = msgspec.convert(
            {
                "url": str(form.get("url") or "").strip(),
                # None ticked: every event, as an endpoint created without `events`.
                "events": events or None,
                "description": description or None,
            },
            CreateEndpoint,
        )
    except msgspec.ValidationError as exc:
        field = "url" if "$.url" in str(exc) else "description"
        message = (
            "The URL must start with http:// or https:// (at most 2,000 characters)."
            if field == "url"
            else "The description may have at most 500 characters."
        )
        raise InvalidRequest(message, param=field) from exc
    async with unit_of_work(state.sessionmaker) as db:
        endpoint, secret = await notifications.create_endpoint(db, data)
        await audit.record(
            db,
            staff.actor,
            AuditAction.WEBHOOK_ENDPOINT_CREATED,
            object_id=endpoint.id,
            after=notifications.endpoint_view(endpoint),
        )
    async with unit_of_work(state.sessionmaker) as db:
        # The secret is shown once, in this response only.
        return await _list_page(request, staff, db, created=(endpoint, secret))


@post("/webhooks/{endpoint_id:str}/delete", status_code=200)
async def delete_endpoint(
    request: Request[Any, Any, Any],
    endpoint_id: FromPath[str],
    staff: NamedDependency[Staff],
    state: State,
) -> Response[Any]:
    staff.require(Permission.WEBHOOKS)
    wanted = _parse_id(endpoint_id, "webhook endpoint")
    async with unit_of_work(state.sessionmaker) as db:
        endpoint = await notifications.delete_endpoint(db, wanted)
        await audit.record(
            db,
            staff.actor,
            AuditAction.WEBHOOK_ENDPOINT_DELETED,
            object_id=endpoint.id,
            after={**notifications.endpoint_view(endpoint), "deleted": True},
        )
    flash(request, f"Deleted the endpoint {endpoint.url}: it gets no more deliveries.")
    return Redirect(f"{HOME}/webhooks", status_code=303)


@post("/webhooks/{endpoint_id:str}/deliveries/{delivery_id:str}/retry", status_code=200)
async def retry_delivery(
    request: Request[Any, Any, Any],
    endpoint_id: FromPath[str],
    delivery_id: FromPath[str],
    staff: NamedDependency[Staff],
    state: State,
) -> Response[Any]:
    """Retry now: the delivery is due at once (a failed one is pending again)."""
    staff.require(Permission.WEBHOOKS)
    endpoint = _parse_id(endpoint_id, "webhook endpoint")
    wanted = _parse_id(delivery_id, "delivery")
    async with unit_of_work(state.sessionmaker) as db:
        delivery = await notifications.retry_now(db, endpoint, wanted)
        await audit.record(
            db,
            staff.actor,
            AuditAction.WEBHOOK_DELIVERY_RETRIED,
            account_id=delivery.account_id,
            object_id=delivery.id,
        )
    form = await request.form()
    back = f"{HOME}/webhooks/{endpoint}" if form.get("back") == "endpoint" else f"{HOME}/webhooks"
    flash(request, "The delivery is due now: the delivery worker sends it within seconds.")
    return Redirect(f"{back}#delivery-{delivery.id}", status_code=303)
