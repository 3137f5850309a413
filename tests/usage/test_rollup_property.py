"""For random events and random queries, the usage query — answered from rollups, late events
and fresh raw events mixed — equals the same query computed directly from the events in Python.
"""

from __future__ import annotations

import bisect
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.accounts import service as accounts
from app.config import DEFAULT_PRICING_DIR
from app.credits import repository as ledger
from app.metering import repository as metering
from app.metering.schemas import UsageEventRecord
from app.pricing import load_catalog
from app.usage import service
from app.usage.schemas import ADMIN_GROUP_FIELDS, GROUP_FIELDS, UsageQuery, parse_usage_query
from app.usage.windows import format_instant
from tests.usage.conftest import roll_up_now

CATALOG = load_catalog(DEFAULT_PRICING_DIR)
# Regions the events fall in: Berlin's and Los Angeles' fall-back days, and an ordinary one.
ORIGINS = [
    datetime(2025, 10, 25, 20, tzinfo=UTC),
    datetime(2025, 11, 2, 5, tzinfo=UTC),
    datetime(2025, 10, 29, 11, tzinfo=UTC),
]
# Dense (a few hours: every bucket and window edge is crowded) to sparse (over a week).
SPANS = [3 * 3600, 30 * 3600, 8 * 86400]
ZONES = ["UTC", "Europe/Berlin", "America/Los_Angeles", "Asia/Kathmandu", "Australia/Lord_Howe"]
MODELS = ["llama-3.1-8b", "llama-3.3-70b", "llama-3.3-70b-online"]
KEYS = [None, uuid.UUID(int=1), uuid.UUID(int=2)]
USERS = [None, "", "alice", "bob"]
ENDPOINTS = ["/v1/chat/completions", "/v1/completions"]


@dataclass(frozen=True)
class Event:
    time: datetime
    model: str
    api_key_id: uuid.UUID | None
    user: str | None
    endpoint: str
    prompt_tokens: int
    completion_tokens: int
    images: int
    search_requests: int
    cost: Decimal
    upstream_cost: Decimal | None  # None: not known


def events_in(origin: datetime, span: int, max_size: int) -> st.SearchStrategy[list[Event]]:
    return st.lists(
        st.builds(
            Event,
            time=st.integers(0, span - 1).map(
                lambda s: origin + timedelta(seconds=s, microseconds=s % 7 * 111)
            ),
            model=st.sampled_from(MODELS),
            api_key_id=st.sampled_from(KEYS),
            user=st.sampled_from(USERS),
            endpoint=st.sampled_from(ENDPOINTS),
            prompt_tokens=st.integers(0, 10**6),
            completion_tokens=st.integers(0, 10**6),
            images=st.integers(0, 3),
            search_requests=st.integers(0, 2),
            cost=st.integers(0, 10**10).map(lambda pico: Decimal(pico).scaleb(-12)),
            upstream_cost=st.none()
            | st.integers(0, 10**10).map(lambda pico: Decimal(pico).scaleb(-12)),
        ),
        max_size=max_size,
    )


def query_in(draw: st.DrawFn, origin: datetime, span: int, admin: bool) -> dict[str, Any]:
    size = draw(st.sampled_from(["DAY", "HOUR", "HOUR", "MINUTE"]))
    longest = {"DAY": span + 2 * 86400, "HOUR": min(span, 5 * 86400), "MINUTE": 6 * 3600}[size]
    # Whole minutes mostly (so that buckets are used), now and then seconds off the grid.
    unit = draw(st.sampled_from([60, 60, 60, 1]))
    start = origin + timedelta(seconds=draw(st.integers(-3600, span)) // unit * unit)
    end = start + timedelta(seconds=max(unit, draw(st.integers(1, longest)) // unit * unit))
    fields = ADMIN_GROUP_FIELDS if admin else GROUP_FIELDS
    body: dict[str, Any] = {
        "start_time": format_instant(start),
        "end_time": format_instant(end),
        "window_size": size,
        "window_timezone": draw(st.sampled_from(ZONES)),
        "group_by": draw(st.lists(st.sampled_from(fields), unique=True, max_size=3)),
    }
    filters = {}
    if draw(st.booleans()):
        filters["model"] = draw(st.lists(st.sampled_from(MODELS), min_size=1, max_size=2))
    if draw(st.booleans()):
        filters["user"] = draw(st.lists(st.sampled_from(USERS), min_size=1, max_size=2))
    if draw(st.booleans()):
        keys = draw(st.lists(st.sampled_from(KEYS), min_size=1, max_size=2))
        filters["api_key_id"] = [None if k is None else str(k) for k in keys]
    if draw(st.booleans()):
        filters["endpoint"] = [draw(st.sampled_from(ENDPOINTS))]
    body["filter_group_by"] = filters
    return body


@dataclass(frozen=True)
class Scenario:
    settled: list[Event]  # rolled up
    late: list[Event]  # arrived after that, rolled up by a second run
    fresh: list[Event]  # arrived after the last run
    other: list[Event]  # another account's
    queries: list[dict[str, Any]]
    admin_query: dict[str, Any]


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    origin = draw(st.sampled_from(ORIGINS))
    span = draw(st.sampled_from(SPANS))
    return Scenario(
        settled=draw(events_in(origin, span, 40)),
        late=draw(events_in(origin, span, 20)),
        fresh=draw(events_in(origin, span, 20)),
        other=draw(events_in(origin, span, 20)),
        queries=[query_in(draw, origin, span, admin=False) for _ in range(4)],
        admin_query=query_in(draw, origin, span, admin=True),
    )


def _value(event: Event, account_id: uuid.UUID, field: str) -> Any:
    if field == "user_id":
        return str(account_id)
    value = getattr(event, field)
    return None if value is None else str(value)


def expected(
    query: UsageQuery,
    body: dict[str, Any],
    events: list[tuple[uuid.UUID, Event]],
    fixed: Any,
    with_margin: bool = False,
) -> list[dict[str, Any]]:
    """The query computed from the events alone: filter, bisect into windows, sum."""
    filters = body["filter_group_by"]
    sums: dict[tuple[Any, ...], list[Any]] = defaultdict(
        lambda: [0, 0, 0, 0, 0, Decimal(0), 0, Decimal(0), Decimal(0)]
    )
    for account_id, event in events:
        if not query.start <= event.time < query.end:
            continue
        if any(_value(event, account_id, f) not in values for f, values in filters.items()):
            continue
        window = bisect.bisect_right(query.bounds, event.time) - 1
        group = tuple(_value(event, account_id, f) for f in query.group_by)
        total = sums[(window, group)]
        for i, amount in enumerate(
            (
                1,
                event.prompt_tokens,
                event.completion_tokens,
                event.images,
                event.search_requests,
                event.cost,
            )
        ):
            total[i] += amount
        if event.upstream_cost is not None:
            total[6] += 1
            total[7] += event.upstream_cost
            total[8] += event.cost - event.upstream_cost
    rows = []
    for (window, group), total in sorted(
        sums.items(),
        key=lambda item: (item[0][0], tuple((v is not None, v or "") for v in item[0][1])),
    ):
        by = dict(zip(query.group_by, group, strict=True))
        row = {
            "groupBy": by,
            "user_id": by.get("user_id", fixed),
            "input_token": total[1],
            "output_token": total[2],
            "requests": total[0],
            "images": total[3],
            "search_requests": total[4],
            "cost": total[5],
            "currency": "EUR",
            "windowStart": format_instant(query.bounds[window]),
            "windowEnd": format_instant(query.bounds[window + 1]),
        }
        if with_margin:
            row["costed_requests"] = total[6]
            row["upstream_cost"] = total[7] if total[6] else None
            row["margin"] = total[8] if total[6] else None
        rows.append(row)
    return rows


def _record(account_id: uuid.UUID, event: Event) -> UsageEventRecord:
    return UsageEventRecord(
        account_id=account_id,
        time=event.time,
        event_key=f"gw:{uuid.uuid4().hex}",
        api_key_id=event.api_key_id,
        user=event.user,
        endpoint=event.endpoint,
        model=event.model,
        prompt_tokens=event.prompt_tokens,
        cached_tokens=0,
        completion_tokens=event.completion_tokens,
        images=event.images,
        search_requests=event.search_requests,
        audio_seconds=Decimal(0),
        cost=event.cost,
        currency="EUR",
        price_version="2025-01-01",
        charge=msgspec.Raw(b"{}"),
        usage_source="upstream",
        outcome="completed",
        upstream_cost=event.upstream_cost,
    )


async def _insert(engine: AsyncEngine, account_id: uuid.UUID, events: list[Event]) -> None:
    records = [_record(account_id, e) for e in events]
    async with engine.begin() as connection:
        for month in {r.month for r in records}:
            await metering.ensure_partition(connection, month)
    async with engine.begin() as connection:
        await ledger.settle(connection, records)


async def _new_account(engine: AsyncEngine) -> uuid.UUID:
    async with AsyncSession(engine) as session, session.begin():
        return (await accounts.create_account(session, name="P", email=None)).id


async def _report(
    engine: AsyncEngine, body: dict[str, Any], account_id: uuid.UUID | None, admin: bool
) -> tuple[UsageQuery, dict[str, Any]]:
    fields = ADMIN_GROUP_FIELDS if admin else GROUP_FIELDS
    query = parse_usage_query(
        msgspec.json.encode(body), fields=fields, now=datetime(2026, 1, 1, tzinfo=UTC)
    )
    async with engine.connect() as connection:
        report = await service.usage_report(
            connection, query, catalog=CATALOG, account_id=account_id, with_margin=admin
        )
    return query, report


def _normalise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    money = ("cost", "upstream_cost", "margin")
    return [
        {**row, **{k: Decimal(row[k]) for k in money if row.get(k) is not None}} for row in rows
    ]


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(scenario=scenarios())
async def test_usage_from_rollups_equals_raw_events(
    clean_db: AsyncEngine, scenario: Scenario
) -> None:
    account_id = await _new_account(clean_db)
    neighbour = await _new_account(clean_db)
    # Rolled up; then late events into the same (rolled-up) range, rolled up again; then events
    # no run has seen yet. Another account's events must never show.
    await _insert(clean_db, account_id, scenario.settled)
    await _insert(clean_db, neighbour, scenario.other)
    await roll_up_now(clean_db)
    await _insert(clean_db, account_id, scenario.late)
    await roll_up_now(clean_db)
    await _insert(clean_db, account_id, scenario.fresh)
    mine = [(account_id, e) for e in scenario.settled + scenario.late + scenario.fresh]
    for body in scenario.queries:
        query, report = await _report(clean_db, body, account_id, admin=False)
        assert _normalise(report["data"]) == expected(query, body, mine, str(account_id)), body
    # Across accounts (only these two are let through the filter).
    body = {**scenario.admin_query}
    body["filter_group_by"] = {
        **body["filter_group_by"],
        "user_id": [str(account_id), str(neighbour)],
    }
    query, report = await _report(clean_db, body, None, admin=True)
    everyone = mine + [(neighbour, e) for e in scenario.other]
    assert _normalise(report["data"]) == expected(query, body, everyone, None, True), body
