"""Recording and reading the audit log. Never commits: an entry joins the transaction of the
change it records, so it exists exactly when the change does."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.audit import repository
from app.db.models import AuditEntry
from app.errors import InvalidRequest
from app.usage.windows import parse_rfc3339

ADMIN_TOKEN = "admin-token"  # noqa: S105 (a name, not a secret: the admin API as actor)
CLI = "cli"  # the actor of `tollgate` commands
MAX_PAGE = 200


class AuditAction(StrEnum):
    ACCOUNT_CREATED = "account.created"
    ACCOUNT_UPDATED = "account.updated"
    ACCOUNT_SUSPENDED = "account.suspended"
    ACCOUNT_UNSUSPENDED = "account.unsuspended"
    KEY_CREATED = "key.created"
    KEY_UPDATED = "key.updated"
    KEY_REVOKED = "key.revoked"
    CREDIT_ADDED = "credit.added"
    CREDIT_ADJUSTED = "credit.adjusted"
    OPERATOR_CREATED = "operator.created"
    OPERATOR_DISABLED = "operator.disabled"
    INVOICES_RUN = "invoices.run"
    WEBHOOK_ENDPOINT_CREATED = "webhook_endpoint.created"
    WEBHOOK_ENDPOINT_DELETED = "webhook_endpoint.deleted"
    WEBHOOK_DELIVERY_RETRIED = "webhook_delivery.retried"


@dataclass(frozen=True, slots=True)
class Actor:
    """Who made a change, and from where."""

    name: str  # an operator's email, ADMIN_TOKEN or CLI
    client_address: str | None = None


async def record(
    session: AsyncSession,
    actor: Actor,
    action: AuditAction,
    *,
    account_id: uuid.UUID | None = None,
    object_id: object = None,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> None:
    await repository.insert(
        session,
        AuditEntry(
            id=uuid.uuid4(),
            actor=actor.name,
            action=action.value,
            account_id=account_id,
            object_id=None if object_id is None else str(object_id),
            before=before,
            after=after,
            client_address=actor.client_address,
        ),
    )


async def audit_page(
    session: AsyncSession,
    *,
    actor: str | None = None,
    action: str | None = None,
    account_id: str | None = None,
    before: str | None = None,
    limit: int = 50,
) -> dict[str, Any]:
    """`GET /admin/audit-log`: newest first; `before` is an entry id (the `next_before` of the
    previous page) or an RFC 3339 time."""
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidRequest(f"limit must be between 1 and {MAX_PAGE}", param="limit")
    if action is not None and action not in set(AuditAction):
        raise InvalidRequest(
            f"action must be one of {', '.join(AuditAction)}", param="action", code="invalid_value"
        )
    account = _uuid(account_id, "account_id")
    entries = await repository.page(
        session,
        actor=actor,
        action=action,
        account_id=account,
        before=await _cursor(session, before),
        limit=limit + 1,
    )
    shown = entries[:limit]
    return {
        "data": [entry_view(e) for e in shown],
        "has_more": len(entries) > limit,
        "next_before": str(shown[-1].id) if len(entries) > limit else None,
    }


async def _cursor(session: AsyncSession, before: str | None) -> tuple[datetime, uuid.UUID] | None:
    if before is None:
        return None
    try:
        entry_id = uuid.UUID(before)
    except ValueError:
        try:
            return parse_rfc3339(before), uuid.UUID(int=0)
        except (ValueError, OverflowError):
            raise InvalidRequest(
                "before must be an audit entry id or an RFC 3339 time", param="before"
            ) from None
    entry = await repository.get(session, entry_id)
    if entry is None:
        raise InvalidRequest(f"No audit entry with id {before}", param="before")
    return entry.at, entry.id


def _uuid(value: str | None, param: str) -> uuid.UUID | None:
    if value is None:
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidRequest(f"{param} must be an id", param=param) from None


def entry_view(entry: AuditEntry) -> dict[str, Any]:
    return {
        "id": str(entry.id),
        "object": "audit_entry",
        "time": entry.at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "actor": entry.actor,
        "action": entry.action,
        "account_id": None if entry.account_id is None else str(entry.account_id),
        "object_id": entry.object_id,
        "before": entry.before,
        "after": entry.after,
        "client_address": entry.client_address,
    }
