"""All SQL of the usage domain: the windowed usage query, the rollup job's fold, and the
reconciliation of balances, ledger and events (job state and locks: `app.db.job_state`).

Statements are assembled only from the constant fragments below, never from input.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any

from sqlalchemy import TextClause, text
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.job_state import JobName, watermark_sql

NIL_UUID = uuid.UUID(int=0)  # `usage_rollups.api_key_id` of events without a key

# Group-by field → its expression over usage_events (e) and over usage_rollups (r).
_DIMENSIONS: Mapping[str, tuple[str, str]] = {
    "model": ("e.model", "r.model"),
    "api_key_id": ("e.api_key_id", "nullif(r.api_key_id, '00000000-0000-0000-0000-000000000000')"),
    "user": ('e."user"', 'r."user"'),
    "endpoint": ("e.endpoint", "r.endpoint"),
    "user_id": ("e.account_id", "r.account_id"),
}

# Filter field → its condition over usage_events and over usage_rollups. `:f_<field>` holds
# the wanted values; an absent api_key_id is wanted as the nil UUID, an absent user through
# `:f_user_null`.
_FILTERS: Mapping[str, tuple[str, str]] = {
    "model": (
        "e.model = ANY(CAST(:f_model AS text[]))",
        "r.model = ANY(CAST(:f_model AS text[]))",
    ),
    "api_key_id": (
        "coalesce(e.api_key_id, '00000000-0000-0000-0000-000000000000')"
        " = ANY(CAST(:f_api_key_id AS uuid[]))",
        "r.api_key_id = ANY(CAST(:f_api_key_id AS uuid[]))",
    ),
    "user": (
        '(e."user" = ANY(CAST(:f_user AS text[])) OR (:f_user_null AND e."user" IS NULL))',
        '(r."user" = ANY(CAST(:f_user AS text[])) OR (:f_user_null AND r."user" IS NULL))',
    ),
    "endpoint": (
        "e.endpoint = ANY(CAST(:f_endpoint AS text[]))",
        "r.endpoint = ANY(CAST(:f_endpoint AS text[]))",
    ),
    "user_id": (
        "e.account_id = ANY(CAST(:f_user_id AS uuid[]))",
        "r.account_id = ANY(CAST(:f_user_id AS uuid[]))",
    ),
}

# An event without a known upstream cost counts in none of the last three (see UsageRow).
_EVENT_MEASURES = (
    "1 AS requests, e.prompt_tokens, e.completion_tokens, e.images, e.search_requests, e.cost, "
    "CAST(e.upstream_cost IS NOT NULL AS integer) AS costed_requests, e.upstream_cost, "
    "e.cost - e.upstream_cost AS margin"
)
_ROLLUP_MEASURES = (
    "r.requests, r.prompt_tokens, r.completion_tokens, r.images, r.search_requests, r.cost, "
    "r.costed_requests, r.upstream_cost, r.margin"
)


@dataclass(frozen=True, slots=True)
class UsageSelection:
    """What one usage query reads. Events in [start, end) count. [rollup_start, rollup_end)
    comes from rollups — hourly buckets for [hour_start, hour_end) inside it, 15-minute ones
    for the rest — plus the events ingested since the watermark; everything else from raw
    events. `window_starts` maps an instant to its window."""

    start: datetime
    end: datetime
    rollup_start: datetime
    rollup_end: datetime
    hour_start: datetime
    hour_end: datetime
    window_starts: Sequence[datetime]
    group_by: tuple[str, ...]
    filters: Mapping[str, Sequence[Any]]
    account_id: uuid.UUID | None  # None: every account (admin)


@dataclass(frozen=True, slots=True)
class UsageRow:
    window: int  # index into window_starts
    group: tuple[Any, ...]  # values of group_by, in order
    currency: str
    requests: int
    input_tokens: int
    output_tokens: int
    images: int
    search_requests: int
    cost: Decimal
    # Over the requests whose upstream cost is known (`costed_requests` of `requests`): the sum
    # of their upstream costs, and of their cost minus it. What the operator pays, never shown
    # to a customer.
    costed_requests: int = 0
    upstream_cost: Decimal = Decimal(0)
    margin: Decimal = Decimal(0)


CUSTOM_PLANS_SQL = text("SET LOCAL plan_cache_mode = force_custom_plan")


@lru_cache(maxsize=256)
def _usage_sql(group_by: tuple[str, ...], filters: tuple[str, ...], by_account: bool) -> TextClause:
    def part(index: int, source: str) -> tuple[str, str]:
        """(group-by select list, filter conditions) over one source, each ready to prefix."""
        dims = "".join(f"{_DIMENSIONS[f][index]} AS g{i}, " for i, f in enumerate(group_by))
        conditions = [_FILTERS[f][index] for f in filters]
        if by_account:
            conditions.insert(0, f"{source}.account_id = :account_id")
        return dims, "".join(f"{c} AND " for c in conditions)

    event_dims, event_where = part(0, "e")
    rollup_dims, rollup_where = part(1, "r")
    events = f"SELECT e.time AS t, {event_dims}e.currency, {_EVENT_MEASURES} FROM usage_events e"
    rollups = f"SELECT r.bucket, {rollup_dims}r.currency, {_ROLLUP_MEASURES} FROM usage_rollups r"
    groups = "".join(f"g{i}, " for i in range(len(group_by)))
    # One statement, so the watermark, the rollups and the raw events are read in one snapshot:
    # a rollup run committing meanwhile can neither hide nor double-count an event.
    return text(
        f"""
        WITH mark AS (
            SELECT {watermark_sql(JobName.USAGE_ROLLUPS)} AS settled
        ), picked AS (
            {events}
            WHERE {event_where}e.time >= :start AND e.time < :rollup_start
            UNION ALL
            {events}
            WHERE {event_where}e.time >= :rollup_end AND e.time < :end
            UNION ALL
            {events}
            WHERE {event_where}e.time >= :rollup_start AND e.time < :rollup_end
              AND e.ingested_at >= (SELECT settled FROM mark)
            UNION ALL
            {rollups}
            WHERE {rollup_where}r.bucket_minutes = 60
              AND r.bucket >= :hour_start AND r.bucket < :hour_end
            UNION ALL
            {rollups}
            WHERE {rollup_where}r.bucket_minutes = 15
              AND r.bucket >= :rollup_start AND r.bucket < :hour_start
            UNION ALL
            {rollups}
            WHERE {rollup_where}r.bucket_minutes = 15
              AND r.bucket >= :hour_end AND r.bucket < :rollup_end
        )
        SELECT width_bucket(t, CAST(:window_starts AS timestamptz[])) - 1 AS "window",
               {groups}currency,
               sum(requests)::bigint AS requests,
               sum(prompt_tokens)::bigint AS input_tokens,
               sum(completion_tokens)::bigint AS output_tokens,
               sum(images)::bigint AS images,
               sum(search_requests)::bigint AS search_requests,
               sum(cost) AS cost,
               sum(costed_requests)::bigint AS costed_requests,
               coalesce(sum(upstream_cost), 0) AS upstream_cost,
               coalesce(sum(margin), 0) AS margin
        FROM picked
        GROUP BY 1, {groups}currency
        """
    )


async def usage_rows(session: AsyncSession, selection: UsageSelection) -> list[UsageRow]:
    params: dict[str, Any] = {
        "start": selection.start,
        "end": selection.end,
        "rollup_start": selection.rollup_start,
        "rollup_end": selection.rollup_end,
        "hour_start": selection.hour_start,
        "hour_end": selection.hour_end,
        "window_starts": list(selection.window_starts),
    }
    if selection.account_id is not None:
        params["account_id"] = selection.account_id
    for field, values in selection.filters.items():
        if field == "user":
            params["f_user"] = [v for v in values if v is not None]
            params["f_user_null"] = None in values
        elif field == "api_key_id":
            params["f_api_key_id"] = [NIL_UUID if v is None else v for v in values]
        else:
            params[f"f_{field}"] = list(values)
    statement = _usage_sql(
        selection.group_by, tuple(sorted(selection.filters)), selection.account_id is not None
    )
    # A prepared statement switches to a generic plan after five runs; for this one that plan
    # cannot prune partitions or size the ranges and runs about twice as long. Planning it for
    # its parameters costs a millisecond.
    await session.execute(CUSTOM_PLANS_SQL)
    width = len(selection.group_by)
    return [
        UsageRow(
            window=row.window,
            group=tuple(row[1 : 1 + width]),
            currency=row.currency,
            requests=row.requests,
            input_tokens=row.input_tokens,
            output_tokens=row.output_tokens,
            images=row.images,
            search_requests=row.search_requests,
            cost=row.cost,
            costed_requests=row.costed_requests,
            upstream_cost=row.upstream_cost,
            margin=row.margin,
        )
        for row in await session.execute(statement, params)
    ]


# ── Rollups ──────────────────────────────────────────────────────────────────────────────────

# Adds the events ingested in [since, until) to their buckets of each width; a late event lands
# in its old buckets. Runs in the same transaction as the watermark moving to `until`, so every
# event is added exactly once.
FOLD_SQL = text(
    """
    WITH fresh AS (
        SELECT account_id, time, model, endpoint,
               coalesce(api_key_id, '00000000-0000-0000-0000-000000000000') AS api_key_id,
               coalesce(substring(sha256(convert_to("user", 'UTF8')) FROM 1 FOR 16), '')
                   AS user_key,
               currency, "user", prompt_tokens, cached_tokens, completion_tokens, images,
               search_requests, audio_seconds, cost, upstream_cost
        FROM usage_events
        WHERE ingested_at >= coalesce(CAST(:since AS timestamptz), '-infinity')
          AND ingested_at < :until
    ), delta AS (
        SELECT f.account_id, w.minutes AS bucket_minutes,
               date_bin(make_interval(mins => w.minutes), f.time,
                        TIMESTAMPTZ '2000-01-01 00:00:00+00') AS bucket,
               f.model, f.endpoint, f.api_key_id, f.user_key, f.currency,
               min(f."user") AS "user",
               count(*) AS requests,
               sum(f.prompt_tokens) AS prompt_tokens,
               sum(f.cached_tokens) AS cached_tokens,
               sum(f.completion_tokens) AS completion_tokens,
               sum(f.images) AS images,
               sum(f.search_requests) AS search_requests,
               sum(f.audio_seconds) AS audio_seconds,
               sum(f.cost) AS cost,
               count(f.upstream_cost) AS costed_requests,
               coalesce(sum(f.upstream_cost), 0) AS upstream_cost,
               coalesce(sum(f.cost - f.upstream_cost), 0) AS margin
        FROM fresh f CROSS JOIN (VALUES (15), (60)) AS w(minutes)
        GROUP BY 1, 2, 3, 4, 5, 6, 7, 8
    ), folded AS (
        INSERT INTO usage_rollups AS r (
            account_id, bucket_minutes, bucket, model, endpoint, api_key_id, user_key, currency,
            "user", requests, prompt_tokens, cached_tokens, completion_tokens, images,
            search_requests, audio_seconds, cost, costed_requests, upstream_cost, margin
        )
        SELECT * FROM delta
        ON CONFLICT (
            account_id, bucket_minutes, bucket, model, endpoint, api_key_id, user_key, currency
        )
        DO UPDATE SET
            requests = r.requests + excluded.requests,
            prompt_tokens = r.prompt_tokens + excluded.prompt_tokens,
            cached_tokens = r.cached_tokens + excluded.cached_tokens,
            completion_tokens = r.completion_tokens + excluded.completion_tokens,
            images = r.images + excluded.images,
            search_requests = r.search_requests + excluded.search_requests,
            audio_seconds = r.audio_seconds + excluded.audio_seconds,
            cost = r.cost + excluded.cost,
            costed_requests = r.costed_requests + excluded.costed_requests,
            upstream_cost = r.upstream_cost + excluded.upstream_cost,
            margin = r.margin + excluded.margin
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM folded) AS buckets,
           (SELECT coalesce(sum(requests), 0) FROM delta WHERE bucket_minutes = 15) AS events
    """
)

# Where a bounded run stops: the `ingested_at` of the event `:n` events past those stamped
# `since` (on the ingested_at index). The events of one transaction share it, so a run never
# splits one; NULL when fewer remain.
CHUNK_END_SQL = text(
    """
    SELECT ingested_at FROM usage_events
    WHERE ingested_at > coalesce(CAST(:since AS timestamptz), '-infinity')
    ORDER BY ingested_at OFFSET :n LIMIT 1
    """
)


async def fold_bound(session: AsyncSession, since: datetime | None, n: int) -> datetime | None:
    """The end of a fold of about `n` events from `since`; None when fewer are left."""
    bound: datetime | None = await session.scalar(CHUNK_END_SQL, {"since": since, "n": n})
    return bound


async def fold_events(
    session: AsyncSession, since: datetime | None, until: datetime
) -> tuple[int, int]:
    """(bucket rows written, events folded) for the events ingested in [since, until)."""
    row = (await session.execute(FOLD_SQL, {"since": since, "until": until})).one()
    return int(row.buckets), int(row.events)


# ── Reconciliation ───────────────────────────────────────────────────────────────────────────

# One statement, one snapshot: every write moves an account's totals in the same transaction as
# its ledger entry or event, so any difference seen here is a real one, never a race.
RECONCILE_SQL = text(
    """
    WITH ledger AS (
        SELECT account_id,
               sum(amount) AS total,
               coalesce(-sum(amount) FILTER (WHERE kind = 'usage'), 0) AS usage
        FROM ledger_entries GROUP BY account_id
    ), events AS (
        SELECT account_id, sum(cost) AS cost FROM usage_events GROUP BY account_id
    ), holds AS (
        SELECT account_id, sum(amount) AS amount FROM holds GROUP BY account_id
    )
    SELECT a.id AS account_id,
           a.balance, coalesce(l.total, 0) AS ledger_total,
           a.total_usage, coalesce(l.usage, 0) AS ledger_usage, coalesce(e.cost, 0) AS event_cost,
           a.held, coalesce(h.amount, 0) AS holds_total
    FROM accounts a
    LEFT JOIN ledger l ON l.account_id = a.id
    LEFT JOIN events e ON e.account_id = a.id
    LEFT JOIN holds h ON h.account_id = a.id
    WHERE a.balance <> coalesce(l.total, 0)
       OR a.total_usage <> coalesce(l.usage, 0)
       OR a.total_usage <> coalesce(e.cost, 0)
       OR a.held <> coalesce(h.amount, 0)
    ORDER BY a.id
    """
)

ACCOUNT_COUNT_SQL = text("SELECT count(*) FROM accounts")


@dataclass(frozen=True, slots=True)
class AccountTotals:
    account_id: uuid.UUID
    balance: Decimal
    ledger_total: Decimal
    total_usage: Decimal
    ledger_usage: Decimal
    event_cost: Decimal
    held: Decimal
    holds_total: Decimal


async def mismatched_accounts(session: AsyncSession) -> tuple[int, list[AccountTotals]]:
    """(accounts checked, the accounts whose totals disagree with their ledger, events or
    holds)."""
    rows = await session.execute(RECONCILE_SQL)
    mismatched = [
        AccountTotals(
            account_id=row.account_id,
            balance=row.balance,
            ledger_total=row.ledger_total,
            total_usage=row.total_usage,
            ledger_usage=row.ledger_usage,
            event_cost=row.event_cost,
            held=row.held,
            holds_total=row.holds_total,
        )
        for row in rows
    ]
    return int(await session.scalar(ACCOUNT_COUNT_SQL) or 0), mismatched
