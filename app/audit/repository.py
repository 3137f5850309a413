"""All SQL of the audit log."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import AuditEntry


async def insert(session: AsyncSession, entry: AuditEntry) -> None:
    session.add(entry)
    await session.flush()


async def get(session: AsyncSession, entry_id: uuid.UUID) -> AuditEntry | None:
    return await session.get(AuditEntry, entry_id)


async def page(
    session: AsyncSession,
    *,
    actor: str | None,
    action: str | None,
    account_id: uuid.UUID | None,
    before: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> Sequence[AuditEntry]:
    """Newest first; `before` is the (time, id) of the last entry of the previous page."""
    query = select(AuditEntry).order_by(AuditEntry.at.desc(), AuditEntry.id.desc()).limit(limit)
    if actor is not None:
        query = query.where(AuditEntry.actor == actor)
    if action is not None:
        query = query.where(AuditEntry.action == action)
    if account_id is not None:
        query = query.where(AuditEntry.account_id == account_id)
    if before is not None:
        query = query.where(tuple_(AuditEntry.at, AuditEntry.id) < before)
    return (await session.scalars(query)).all()
