"""Partition maintenance: the monthly partitions of `usage_events` are made ahead of time, so
the writer never has to create one on the request path at the turn of a month. (Back-dated
events still get theirs on demand, from the writer and from ingestion.)"""

from __future__ import annotations

from datetime import date

from sqlalchemy.ext.asyncio import AsyncSession

from app.metering import repository

MONTHS_AHEAD = 2


def months_from(today: date, count: int) -> list[date]:
    """The first days of this month and the `count` months after it."""
    months = []
    year, month = today.year, today.month
    for _ in range(count + 1):
        months.append(date(year, month, 1))
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return months


async def maintain_partitions(
    session: AsyncSession, today: date, *, months_ahead: int = MONTHS_AHEAD
) -> list[date]:
    """Ensure this month's partition and the next ones; returns the months ensured."""
    months = months_from(today, months_ahead)
    for month in months:
        await repository.ensure_partition(session, month)
    return months
