"""Webhook endpoints of the admin API (SPEC 5, 11)."""

from __future__ import annotations

from typing import Any

from litestar import Request, Router, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody
from sqlalchemy.ext.asyncio import AsyncSession

from app.accounts.service import parse_id
from app.admin.guards import require_admin
from app.audit import service as audit
from app.audit.service import ADMIN_TOKEN, Actor, AuditAction
from app.notifications import service
from app.notifications.schemas import CreateEndpoint


def _actor(request: Request[Any, Any, Any]) -> Actor:
    return Actor(ADMIN_TOKEN, request.client.host if request.client else None)


@post("/webhook-endpoints", status_code=201)
async def create_endpoint(
    request: Request[Any, Any, Any],
    data: JSONBody[CreateEndpoint],
    db: NamedDependency[AsyncSession],
) -> dict[str, Any]:
    endpoint, secret = await service.create_endpoint(db, data)
    view = service.endpoint_view(endpoint)
    await audit.record(
        db, _actor(request), AuditAction.WEBHOOK_ENDPOINT_CREATED, object_id=endpoint.id, after=view
    )
    return {**view, "secret": secret}


@get("/webhook-endpoints")
async def list_endpoints(db: NamedDependency[AsyncSession]) -> dict[str, Any]:
    from app.notifications import repository

    return {"data": [service.endpoint_view(e) for e in await repository.list_endpoints(db)]}


@delete("/webhook-endpoints/{endpoint_id:str}", status_code=200)
async def delete_endpoint(
    request: Request[Any, Any, Any], endpoint_id: FromPath[str], db: NamedDependency[AsyncSession]
) -> dict[str, Any]:
    endpoint = await service.delete_endpoint(db, parse_id(endpoint_id, param="endpoint_id"))
    view = {**service.endpoint_view(endpoint), "deleted": True}
    await audit.record(
        db, _actor(request), AuditAction.WEBHOOK_ENDPOINT_DELETED, object_id=endpoint.id, after=view
    )
    return view


@get("/webhook-endpoints/{endpoint_id:str}/deliveries")
async def list_deliveries(
    endpoint_id: FromPath[str], db: NamedDependency[AsyncSession]
) -> dict[str, Any]:
    return await service.deliveries_view(db, parse_id(endpoint_id, param="endpoint_id"))


@post("/webhook-endpoints/{endpoint_id:str}/deliveries/{delivery_id:str}/retry", status_code=200)
async def retry_delivery(
    request: Request[Any, Any, Any],
    endpoint_id: FromPath[str],
    delivery_id: FromPath[str],
    db: NamedDependency[AsyncSession],
) -> dict[str, Any]:
    """Retry now: the delivery is due at once (a failed one is pending again)."""
    delivery = await service.retry_now(
        db, parse_id(endpoint_id, param="endpoint_id"), parse_id(delivery_id, param="delivery_id")
    )
    await audit.record(
        db,
        _actor(request),
        AuditAction.WEBHOOK_DELIVERY_RETRIED,
        account_id=delivery.account_id,
        object_id=delivery.id,
    )
    return {"id": str(delivery.id), "status": delivery.status}


notification_admin_router = Router(
    path="/admin",
    guards=[require_admin],
    route_handlers=[
        create_endpoint,
        list_endpoints,
        delete_endpoint,
        list_deliveries,
        retry_delivery,
    ],
    include_in_schema=False,
)
