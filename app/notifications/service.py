"""Writing events to the outbox, and the webhook endpoints of the admin API. Never commits: an
event joins the transaction of the change that causes it, so it exists exactly when the
change does."""

from __future__ import annotations

import base64
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import (
    Account,
    DeliveryAttempt,
    NotificationDelivery,
    NotificationEvent,
    WebhookEndpoint,
)
from app.errors import InvalidRequest, NotFound
from app.money import money_str
from app.notifications import repository
from app.notifications.schemas import EMAIL_SUBJECTS, CreateEndpoint, EventType

MAX_DELIVERIES_LISTED = 200
# One address, nothing that could break a mail header: no spaces or control characters.
_EMAIL = re.compile(r"[^\s@\x00-\x1f\x7f]+@[^\s@\x00-\x1f\x7f]+")


async def emit(
    session: AsyncSession, account_id: uuid.UUID, type_: EventType, data: dict[str, Any]
) -> str:
    """Write an event to the outbox in the caller's transaction; returns its id. `data` gets
    the account's id; money in it is passed as Decimal and written as a decimal string."""
    event_id = repository.new_message_id()
    body = {"account_id": str(account_id)}
    body.update({k: money_str(v) if isinstance(v, Decimal) else v for k, v in data.items()})
    await repository.insert_event(session, account_id, event_id, type_.value, body)
    return event_id


def webhook_body(event: NotificationEvent) -> bytes:
    """The body of every delivery of `event` (SPEC 11): the same bytes on every retry."""
    import msgspec

    return msgspec.json.encode(
        {"type": event.type, "timestamp": _instant(event.created_at), "data": event.data}
    )


# ── webhook endpoints (SPEC 5) ──────────────────────────────────────────────────────────────


async def create_endpoint(
    session: AsyncSession, data: CreateEndpoint
) -> tuple[WebhookEndpoint, str]:
    """The endpoint and its signing secret (`whsec_` + base64 of 32 random bytes, Standard
    Webhooks' form), shown once."""
    if data.events is not None:
        unknown = sorted(set(data.events) - set(EventType))
        if unknown or not data.events:
            raise InvalidRequest(
                f"events must be a non-empty list of {', '.join(EventType)}"
                + (f"; unknown: {', '.join(unknown)}" if unknown else ""),
                param="events",
                code="invalid_value",
            )
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    endpoint = await repository.insert_endpoint(
        session,
        WebhookEndpoint(
            id=uuid.uuid4(),
            url=data.url,
            secret=secret,
            events=None if data.events is None else sorted(set(data.events)),
            description=data.description,
        ),
    )
    return endpoint, secret


async def get_endpoint(session: AsyncSession, endpoint_id: uuid.UUID) -> WebhookEndpoint:
    endpoint = await repository.get_endpoint(session, endpoint_id)
    if endpoint is None or endpoint.deleted_at is not None:
        raise NotFound(f"No webhook endpoint with id {endpoint_id}", param="endpoint_id")
    return endpoint


async def delete_endpoint(session: AsyncSession, endpoint_id: uuid.UUID) -> WebhookEndpoint:
    endpoint = await get_endpoint(session, endpoint_id)
    endpoint.deleted_at = datetime.now(UTC)
    await session.flush()
    return endpoint


def endpoint_view(endpoint: WebhookEndpoint) -> dict[str, Any]:
    return {
        "id": str(endpoint.id),
        "object": "webhook_endpoint",
        "url": endpoint.url,
        "events": endpoint.events,
        "description": endpoint.description,
        "created_at": _instant(endpoint.created_at),
    }


async def deliveries_view(session: AsyncSession, endpoint_id: uuid.UUID) -> dict[str, Any]:
    await get_endpoint(session, endpoint_id)
    rows = await repository.endpoint_deliveries(session, endpoint_id, MAX_DELIVERIES_LISTED)
    return {"data": [_delivery_view(d, type_, attempts) for d, type_, attempts in rows]}


def _delivery_view(
    delivery: NotificationDelivery, type_: str, attempts: list[DeliveryAttempt]
) -> dict[str, Any]:
    return {
        "id": str(delivery.id),
        "object": "webhook_delivery",
        "event_id": delivery.event_id,
        "type": type_,
        "account_id": str(delivery.account_id),
        "status": delivery.status,
        "attempts": [
            {
                "time": _instant(a.at),
                "status": a.status_code,
                "latency_ms": a.latency_ms,
                "error": a.error,
            }
            for a in attempts
        ],
        "next_attempt_at": _instant(delivery.next_attempt_at)
        if delivery.status == "pending"
        else None,
        "created_at": _instant(delivery.created_at),
    }


async def retry_now(
    session: AsyncSession, endpoint_id: uuid.UUID, delivery_id: uuid.UUID
) -> NotificationDelivery:
    delivery = await repository.retry_now(session, endpoint_id, delivery_id)
    if delivery is None:
        raise NotFound(f"No delivery with id {delivery_id}", param="delivery_id")
    return delivery


def _instant(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ── an account's notification settings (the dashboard, SPEC 9) ─────────────────────────────


async def save_settings(
    session: AsyncSession,
    account: Account,
    *,
    email: str | None,
    low_balance_threshold: Decimal | None,
    emails_on: set[EventType],
) -> None:
    """The customer's address, low-balance threshold and the emails they want (each of
    `EMAIL_SUBJECTS` is on unless turned off). `account` must be locked."""
    if email is not None and (len(email) > 320 or not _EMAIL.fullmatch(email)):
        raise InvalidRequest("That doesn't look like an email address.", param="email")
    if low_balance_threshold is not None and low_balance_threshold < 0:
        raise InvalidRequest("The threshold must not be negative.", param="low_balance_threshold")
    if account.low_balance_threshold != low_balance_threshold:
        account.low_balance_armed = True  # a new threshold: the next crossing notifies
    account.email = email
    account.low_balance_threshold = low_balance_threshold
    account.emails_off = sorted(t.value for t in EMAIL_SUBJECTS if t not in emails_on)
    await session.flush()


@dataclass(frozen=True, slots=True)
class RecentEvent:
    """An event as the dashboard lists it, with its email if it got one."""

    id: str
    type: str
    time: datetime
    data: dict[str, Any]
    dispatched: bool  # fanned out into deliveries (until then no email exists yet)
    email: NotificationDelivery | None


async def recent(
    session: AsyncSession, account_id: uuid.UUID, limit: int = 20
) -> list[RecentEvent]:
    """The account's newest events, newest first, each with its email delivery. Webhook
    deliveries are left out: the endpoints are the operator's, not the customer's."""
    events = await repository.recent_events(session, account_id, limit)
    emails = await repository.email_deliveries(session, account_id, [e.id for e in events])
    return [
        RecentEvent(
            id=e.id,
            type=e.type,
            time=e.created_at,
            data=dict(e.data),
            dispatched=e.dispatched_at is not None,
            email=emails.get(e.id),
        )
        for e in events
    ]
