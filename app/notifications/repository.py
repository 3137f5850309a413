"""All SQL of notifications: the outbox, endpoints, deliveries and attempts.

Other domains write an outbox row in their own transaction through `service.emit`, or, inside
a statement of theirs (the settlement), with `outbox_insert_sql`.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import (
    DeliveryAttempt,
    NotificationDelivery,
    NotificationEvent,
    WebhookEndpoint,
)
from app.notifications.schemas import Channel, DeliveryStatus

# A webhook-id: "msg_" and 32 hex digits, drawn by Postgres inside other statements.
MESSAGE_ID_SQL = "'msg_' || replace(CAST(gen_random_uuid() AS text), '-', '')"


def new_message_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


def outbox_insert_sql(rows: str) -> str:
    """An INSERT of the events `rows` selects as (account_id, type, data jsonb)."""
    return (
        "INSERT INTO notification_events (account_id, id, type, data) "
        f"SELECT r.account_id, {MESSAGE_ID_SQL}, r.type, r.data FROM ({rows}) r"
    )


async def insert_event(
    session: AsyncSession, account_id: uuid.UUID, event_id: str, type_: str, data: dict[str, Any]
) -> None:
    session.add(NotificationEvent(account_id=account_id, id=event_id, type=type_, data=data))
    await session.flush()


# One dispatcher at a time (an advisory lock, taken for the transaction): events are fanned out
# in `seq` order, so an account's deliveries are made in the order of its events.
DISPATCH_SQL = text(
    """
    WITH go AS (
        SELECT pg_try_advisory_xact_lock(:lock) AS ok
    ), picked AS (
        SELECT e.account_id, e.id, e.seq, e.type FROM notification_events e, go
        WHERE go.ok AND e.dispatched_at IS NULL ORDER BY e.seq LIMIT :n
    ), hooks AS (
        INSERT INTO notification_deliveries (account_id, id, event_id, seq, channel, endpoint_id)
        SELECT p.account_id, gen_random_uuid(), p.id, p.seq, 'webhook', w.id
        FROM picked p JOIN webhook_endpoints w
          ON w.deleted_at IS NULL AND (w.events IS NULL OR p.type = ANY(w.events))
        ON CONFLICT DO NOTHING
        RETURNING 1
    ), mails AS (
        INSERT INTO notification_deliveries
            (account_id, id, event_id, seq, channel, endpoint_id, email_to)
        SELECT p.account_id, gen_random_uuid(), p.id, p.seq, 'email', NULL, a.email
        FROM picked p JOIN accounts a ON a.id = p.account_id
        WHERE :email_on AND a.email IS NOT NULL AND a.email <> ''
          AND p.type = ANY(CAST(:email_types AS text[])) AND NOT (p.type = ANY(a.emails_off))
        ON CONFLICT DO NOTHING
        RETURNING 1
    ), done AS (
        UPDATE notification_events e SET dispatched_at = now()
        FROM picked p WHERE e.account_id = p.account_id AND e.id = p.id
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM done) AS events,
           (SELECT count(*) FROM hooks) + (SELECT count(*) FROM mails) AS deliveries
    """
)

# Due deliveries, leased to this instance: never one while an earlier delivery of the same
# account to the same endpoint (or address) is pending, nor while an earlier event of the
# account waits to be fanned out; at most `n`, none to the endpoints this instance is busy
# with (so a slow endpoint cannot take every slot).
CLAIM_SQL = text(
    f"""
    UPDATE notification_deliveries d
    SET leased_until = now() + make_interval(secs => :lease), attempts = d.attempts + 1
    FROM (
        SELECT c.account_id, c.id FROM notification_deliveries c
        WHERE c.status = '{DeliveryStatus.PENDING}' AND c.next_attempt_at <= now()
          AND (c.leased_until IS NULL OR c.leased_until < now())
          AND NOT (coalesce(c.endpoint_id, '00000000-0000-0000-0000-000000000000')
                   = ANY(CAST(:busy AS uuid[])))
          AND NOT EXISTS (
              SELECT 1 FROM notification_deliveries b
              WHERE b.account_id = c.account_id AND b.channel = c.channel
                AND b.endpoint_id IS NOT DISTINCT FROM c.endpoint_id
                AND b.status = '{DeliveryStatus.PENDING}' AND b.seq < c.seq
          )
          AND NOT EXISTS (
              SELECT 1 FROM notification_events u
              WHERE u.account_id = c.account_id AND u.dispatched_at IS NULL AND u.seq < c.seq
          )
        ORDER BY c.next_attempt_at LIMIT :n
        FOR UPDATE SKIP LOCKED
    ) picked
    WHERE d.account_id = picked.account_id AND d.id = picked.id
    RETURNING d.account_id, d.id
    """
)


async def dispatch(
    session: AsyncSession, *, lock: int, email_types: list[str], email_on: bool, n: int = 500
) -> tuple[int, int]:
    row = (
        await session.execute(
            DISPATCH_SQL,
            {"lock": lock, "email_types": email_types, "email_on": email_on, "n": n},
        )
    ).one()
    return int(row.events), int(row.deliveries)


async def claim(
    session: AsyncSession, *, n: int, busy: Sequence[uuid.UUID], lease_seconds: float
) -> list[tuple[NotificationDelivery, NotificationEvent, WebhookEndpoint | None]]:
    claimed = (
        await session.execute(CLAIM_SQL, {"n": n, "busy": list(busy), "lease": lease_seconds})
    ).all()
    if not claimed:
        return []
    keys = [(row.account_id, row.id) for row in claimed]
    deliveries = (
        await session.scalars(
            select(NotificationDelivery)
            .where(
                NotificationDelivery.id.in_([delivery_id for _, delivery_id in keys]),
            )
            .execution_options(populate_existing=True)
        )
    ).all()
    events = {
        (e.account_id, e.id): e
        for e in await session.scalars(
            select(NotificationEvent).where(
                NotificationEvent.id.in_([d.event_id for d in deliveries])
            )
        )
    }
    endpoint_ids = {d.endpoint_id for d in deliveries if d.endpoint_id is not None}
    endpoints = {
        w.id: w
        for w in await session.scalars(
            select(WebhookEndpoint).where(WebhookEndpoint.id.in_(endpoint_ids))
        )
    }
    return [
        (
            d,
            events[(d.account_id, d.event_id)],
            endpoints.get(d.endpoint_id) if d.endpoint_id else None,
        )
        for d in sorted(deliveries, key=lambda d: d.seq)
    ]


@dataclass(frozen=True, slots=True)
class AttemptResult:
    account_id: uuid.UUID
    delivery_id: uuid.UUID
    attempt: int
    status_code: int | None
    latency_ms: int
    error: str | None
    status: DeliveryStatus
    next_attempt_at: datetime | None  # when still pending


RECORD_SQL = text(
    """
    WITH r AS (
        SELECT * FROM unnest(
            CAST(:accounts AS uuid[]), CAST(:ids AS uuid[]), CAST(:attempts AS int[]),
            CAST(:codes AS int[]), CAST(:latencies AS int[]), CAST(:errors AS text[]),
            CAST(:statuses AS text[]), CAST(:next AS timestamptz[])
        ) AS t(account_id, id, attempt, code, latency, error, status, next_at)
    ), kept AS (
        INSERT INTO delivery_attempts
            (account_id, delivery_id, attempt, status_code, latency_ms, error)
        SELECT account_id, id, attempt, code, latency, error FROM r
        ON CONFLICT DO NOTHING
        RETURNING 1
    )
    UPDATE notification_deliveries d
    SET status = r.status, leased_until = NULL, last_status = r.code, last_error = r.error,
        next_attempt_at = coalesce(r.next_at, d.next_attempt_at),
        finished_at = CASE WHEN r.status = 'pending' THEN NULL ELSE now() END
    FROM r WHERE d.account_id = r.account_id AND d.id = r.id
    """
)


async def record_attempts(session: AsyncSession, results: Sequence[AttemptResult]) -> None:
    """Every attempt kept, and each delivery moved to its outcome, in one statement."""
    await session.execute(
        RECORD_SQL,
        {
            "accounts": [r.account_id for r in results],
            "ids": [r.delivery_id for r in results],
            "attempts": [r.attempt for r in results],
            "codes": [r.status_code for r in results],
            "latencies": [r.latency_ms for r in results],
            "errors": [r.error for r in results],
            "statuses": [r.status.value for r in results],
            "next": [r.next_attempt_at for r in results],
        },
    )


async def insert_endpoint(session: AsyncSession, endpoint: WebhookEndpoint) -> WebhookEndpoint:
    session.add(endpoint)
    await session.flush()
    await session.refresh(endpoint)
    return endpoint


async def get_endpoint(session: AsyncSession, endpoint_id: uuid.UUID) -> WebhookEndpoint | None:
    return await session.get(WebhookEndpoint, endpoint_id)


async def list_endpoints(session: AsyncSession) -> Sequence[WebhookEndpoint]:
    return (
        await session.scalars(
            select(WebhookEndpoint)
            .where(WebhookEndpoint.deleted_at.is_(None))
            .order_by(WebhookEndpoint.created_at)
        )
    ).all()


async def endpoint_deliveries(
    session: AsyncSession, endpoint_id: uuid.UUID, limit: int
) -> list[tuple[NotificationDelivery, str, list[DeliveryAttempt]]]:
    """Newest first, each with its event's type and its attempts."""
    deliveries = (
        await session.scalars(
            select(NotificationDelivery)
            .where(NotificationDelivery.endpoint_id == endpoint_id)
            .order_by(NotificationDelivery.created_at.desc(), NotificationDelivery.seq.desc())
            .limit(limit)
        )
    ).all()
    if not deliveries:
        return []
    types = dict(
        (
            await session.execute(
                select(NotificationEvent.id, NotificationEvent.type).where(
                    NotificationEvent.id.in_([d.event_id for d in deliveries])
                )
            )
        ).all()
    )
    attempts: dict[uuid.UUID, list[DeliveryAttempt]] = {}
    for attempt in await session.scalars(
        select(DeliveryAttempt)
        .where(DeliveryAttempt.delivery_id.in_([d.id for d in deliveries]))
        .order_by(DeliveryAttempt.attempt)
    ):
        attempts.setdefault(attempt.delivery_id, []).append(attempt)
    return [(d, types.get(d.event_id, ""), attempts.get(d.id, [])) for d in deliveries]


async def retry_now(
    session: AsyncSession, endpoint_id: uuid.UUID, delivery_id: uuid.UUID
) -> NotificationDelivery | None:
    delivery = await session.scalar(
        select(NotificationDelivery).where(
            NotificationDelivery.endpoint_id == endpoint_id, NotificationDelivery.id == delivery_id
        )
    )
    if delivery is None:
        return None
    delivery.status = DeliveryStatus.PENDING.value
    delivery.next_attempt_at = datetime.now(delivery.created_at.tzinfo)
    delivery.finished_at = None
    await session.flush()
    return delivery


async def recent_events(
    session: AsyncSession, account_id: uuid.UUID, limit: int
) -> Sequence[NotificationEvent]:
    return (
        await session.scalars(
            select(NotificationEvent)
            .where(NotificationEvent.account_id == account_id)
            .order_by(NotificationEvent.seq.desc())
            .limit(limit)
        )
    ).all()


async def email_deliveries(
    session: AsyncSession, account_id: uuid.UUID, event_ids: Sequence[str]
) -> dict[str, NotificationDelivery]:
    """The email of each of these events that got one, by event id."""
    if not event_ids:
        return {}
    deliveries = await session.scalars(
        select(NotificationDelivery).where(
            NotificationDelivery.account_id == account_id,
            NotificationDelivery.event_id.in_(list(event_ids)),
            NotificationDelivery.channel == Channel.EMAIL.value,
        )
    )
    return {d.event_id: d for d in deliveries}
