"""The usage query (SPEC 3.3): usage per window and group, equal to the raw usage events exactly.

The part of the range made of whole buckets that each lie within one window is read from
rollups (hourly buckets where the windows allow, 15-minute ones elsewhere) plus the events
ingested since the rollup watermark; the edges (and MINUTE windows) from raw events. Never
commits.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import ModelNotFound
from app.money import money_str
from app.pricing import Catalog
from app.usage import repository
from app.usage.repository import UsageRow, UsageSelection
from app.usage.schemas import FilterValue, UsageQuery
from app.usage.windows import format_instant, rollup_spans


async def usage_report(
    session: AsyncSession,
    query: UsageQuery,
    *,
    catalog: Catalog,
    account_id: uuid.UUID | None,
) -> dict[str, Any]:
    """The response of `POST /v1/usage/completions` for one account, or of the admin query
    across accounts when `account_id` is None."""
    (rollup_start, rollup_end), (hour_start, hour_end) = rollup_spans(
        query.start, query.end, query.bounds
    )
    filters = dict(query.filters)
    if "model" in filters:
        filters["model"] = canonical_models(catalog, filters["model"])
    selection = UsageSelection(
        start=query.start,
        end=query.end,
        rollup_start=rollup_start,
        rollup_end=rollup_end,
        hour_start=hour_start,
        hour_end=hour_end,
        window_starts=query.bounds[:-1],
        group_by=query.group_by,
        filters=filters,
        account_id=account_id,
    )
    rows = await repository.usage_rows(session, selection)
    rows.sort(key=_order)
    fixed_user = _fixed_user_id(query, account_id)
    return {
        "data": [_row_view(row, query, fixed_user) for row in rows],
        "start_time": format_instant(query.start),
        "end_time": format_instant(query.end),
        "window_size": query.window_size.value,
    }


def canonical_models(catalog: Catalog, values: Iterable[FilterValue]) -> tuple[FilterValue, ...]:
    """Filter values as stored: usage records the canonical catalog name (suffix included), so
    an alias or another spelling of a model priced at any time matches it too. Unknown names
    are kept as given (a retired model, or nothing at all)."""
    canonical: list[FilterValue] = []
    for value in values:
        name = value
        if isinstance(value, str):
            for version in reversed(catalog.versions):
                try:
                    name = catalog.resolve(value, version.starts_at).name
                except ModelNotFound:
                    continue
                break
        canonical.append(name)
    return tuple(canonical)


def _order(row: UsageRow) -> tuple[Any, ...]:
    # Windows in time order, then groups by their values (absent first, then by code point).
    group = tuple((value is not None, "" if value is None else str(value)) for value in row.group)
    return (row.window, group, row.currency)


def _fixed_user_id(query: UsageQuery, account_id: uuid.UUID | None) -> str | None:
    """`user_id` of every row, unless rows are grouped by account: the customer's own account,
    or the one account an admin query filters on; None across several accounts."""
    if account_id is not None:
        return str(account_id)
    wanted = query.filters.get("user_id", ())
    return str(wanted[0]) if len(wanted) == 1 and wanted[0] is not None else None


def _row_view(row: UsageRow, query: UsageQuery, fixed_user: str | None) -> dict[str, Any]:
    group = {field: _json(value) for field, value in zip(query.group_by, row.group, strict=True)}
    user_id = group.get("user_id", fixed_user)
    return {
        "groupBy": group,
        "user_id": user_id,
        "input_token": row.input_tokens,
        "output_token": row.output_tokens,
        "requests": row.requests,
        "images": row.images,
        "search_requests": row.search_requests,
        "cost": money_str(row.cost),
        "currency": row.currency,
        "windowStart": format_instant(query.bounds[row.window]),
        "windowEnd": format_instant(query.bounds[row.window + 1]),
    }


def _json(value: Any) -> str | None:
    return None if value is None else str(value)


async def cost_since(
    session: AsyncSession,
    account_id: uuid.UUID,
    starts: Iterable[datetime],
    end: datetime,
    *,
    api_key_id: uuid.UUID | None = None,
) -> dict[datetime, Decimal]:
    """The cost of the account's events (of one key, if given) in [start, end) for each start,
    as the usage query counts it (one currency per account)."""
    wanted = sorted(set(starts))
    bounds = [*wanted, end]
    (rollup_start, rollup_end), (hour_start, hour_end) = rollup_spans(wanted[0], end, bounds)
    filters: dict[str, tuple[FilterValue, ...]] = {}
    if api_key_id is not None:
        filters["api_key_id"] = (api_key_id,)
    rows = await repository.usage_rows(
        session,
        UsageSelection(
            start=wanted[0],
            end=end,
            rollup_start=rollup_start,
            rollup_end=rollup_end,
            hour_start=hour_start,
            hour_end=hour_end,
            window_starts=wanted,
            group_by=(),
            filters=filters,
            account_id=account_id,
        ),
    )
    per_window = [Decimal(0)] * len(wanted)
    for row in rows:
        per_window[row.window] += row.cost
    # Windows are contiguous: the cost since a start is that of its window and every later one.
    return {start: sum(per_window[i:], Decimal(0)) for i, start in enumerate(wanted)}


async def cost_per_day(
    session: AsyncSession, account_id: uuid.UUID | None, first: date, end: date
) -> dict[date, Decimal]:
    """The cost of each UTC day in [first, end) with usage, of one account or of all (`None`),
    as the usage query counts it."""
    starts = [
        datetime(d.year, d.month, d.day, tzinfo=UTC)
        for d in (first + timedelta(days=i) for i in range((end - first).days))
    ]
    stop = datetime(end.year, end.month, end.day, tzinfo=UTC)
    bounds = [*starts, stop]
    (rollup_start, rollup_end), (hour_start, hour_end) = rollup_spans(starts[0], stop, bounds)
    rows = await repository.usage_rows(
        session,
        UsageSelection(
            start=starts[0],
            end=stop,
            rollup_start=rollup_start,
            rollup_end=rollup_end,
            hour_start=hour_start,
            hour_end=hour_end,
            window_starts=starts,
            group_by=(),
            filters={},
            account_id=account_id,
        ),
    )
    per_day: dict[date, Decimal] = {}
    for row in rows:
        day = starts[row.window].date()
        per_day[day] = per_day.get(day, Decimal(0)) + row.cost
    return per_day
