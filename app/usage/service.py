"""The usage query (SPEC 3.3): usage per window and group, equal to the raw usage events exactly.
The admin variant also reports what the operator paid the upstreams and kept (`with_margin`),
and `usage_by_day` gives the console revenue, upstream cost and margin by model and day.

The part of the range made of whole buckets that each lie within one window is read from
rollups (hourly buckets where the windows allow, 15-minute ones elsewhere) plus the events
ingested since the rollup watermark; the edges (and MINUTE windows) from raw events. Never
commits.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
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
    with_margin: bool = False,
) -> dict[str, Any]:
    """The response of `POST /v1/usage/completions` for one account, or of the admin query
    across accounts when `account_id` is None. `with_margin` (the admin query's only: a
    customer never sees what the operator pays) adds to each row `upstream_cost` and `margin`
    over its `costed_requests`, the requests whose upstream cost is known (null when none)."""
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
        "data": [_row_view(row, query, fixed_user, with_margin) for row in rows],
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


def _row_view(
    row: UsageRow, query: UsageQuery, fixed_user: str | None, with_margin: bool
) -> dict[str, Any]:
    group = {field: _json(value) for field, value in zip(query.group_by, row.group, strict=True)}
    user_id = group.get("user_id", fixed_user)
    view: dict[str, Any] = {
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
    if with_margin:
        known = row.costed_requests > 0
        view["costed_requests"] = row.costed_requests
        view["upstream_cost"] = money_str(row.upstream_cost) if known else None
        view["margin"] = money_str(row.margin) if known else None
    return view


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
    starts, rows = await _utc_day_rows(session, first, end, (), {}, account_id)
    per_day: dict[date, Decimal] = {}
    for row in rows:
        day = starts[row.window].date()
        per_day[day] = per_day.get(day, Decimal(0)) + row.cost
    return per_day


@dataclass(frozen=True, slots=True)
class DayUsage:
    """One UTC day's usage of one group, in one currency, across accounts: what customers were
    charged (`revenue`) and, over the `costed_requests` whose upstream cost is known, what the
    operator paid the upstreams (`upstream_cost`) and kept (`margin` = their revenue − their
    upstream cost). Requests without a known cost count in revenue only."""

    day: date
    group: tuple[Any, ...]  # values of the group-by fields, in order
    currency: str
    requests: int
    input_tokens: int
    output_tokens: int
    images: int
    search_requests: int
    revenue: Decimal
    costed_requests: int
    upstream_cost: Decimal
    margin: Decimal


async def usage_by_day(
    session: AsyncSession,
    first: date,
    last: date,
    *,
    group_by: tuple[str, ...] = ("model",),
    filters: Mapping[str, tuple[FilterValue, ...]] | None = None,
) -> list[DayUsage]:
    """Usage across accounts per UTC day from `first` to `last` (included), by model unless
    `group_by` says otherwise (fields of the admin usage query; `filters` as stored, e.g. model
    names made canonical). The same numbers as `POST /admin/usage/completions` with DAY windows
    in UTC, in no particular order."""
    starts, rows = await _utc_day_rows(
        session, first, last + timedelta(days=1), group_by, dict(filters or {}), None
    )
    return [
        DayUsage(
            day=starts[row.window].date(),
            group=row.group,
            currency=row.currency,
            requests=row.requests,
            input_tokens=row.input_tokens,
            output_tokens=row.output_tokens,
            images=row.images,
            search_requests=row.search_requests,
            revenue=row.cost,
            costed_requests=row.costed_requests,
            upstream_cost=row.upstream_cost,
            margin=row.margin,
        )
        for row in rows
    ]


async def _utc_day_rows(
    session: AsyncSession,
    first: date,
    end: date,
    group_by: tuple[str, ...],
    filters: dict[str, tuple[FilterValue, ...]],
    account_id: uuid.UUID | None,
) -> tuple[list[datetime], list[UsageRow]]:
    """The usage query's rows for UTC DAY windows over [first, end), and the windows' starts."""
    starts = [
        datetime(d.year, d.month, d.day, tzinfo=UTC)
        for d in (first + timedelta(days=i) for i in range((end - first).days))
    ]
    stop = datetime(end.year, end.month, end.day, tzinfo=UTC)
    (rollup_start, rollup_end), (hour_start, hour_end) = rollup_spans(
        starts[0], stop, [*starts, stop]
    )
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
            group_by=group_by,
            filters=filters,
            account_id=account_id,
        ),
    )
    return starts, rows
