"""`POST /v1/usage/completions` end to end, in the manner of OpenMeter's e2e suite: events go in
through `POST /admin/events`, windows come out of the live API, before and after rollups."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import pairwise
from typing import Any
from zoneinfo import ZoneInfo

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.usage.conftest import Customer, ingest, new_customer, roll_up_now

COST = Decimal("0.0003")  # 1,000 + 500 tokens of llama-3.1-8b at €0.20 per million


def _z(instant: datetime) -> str:
    return instant.strftime("%Y-%m-%dT%H:%M:%SZ")


def _at(text_: str) -> datetime:
    return datetime.fromisoformat(text_.replace("Z", "+00:00"))


def _hourly(start: datetime, end: datetime) -> list[datetime]:
    times, at = [], start
    while at < end:
        times.append(at)
        at += timedelta(hours=1)
    return times


async def _both_ways(engine: AsyncEngine, customer: Customer, **body: Any) -> dict[str, Any]:
    """The answer from raw events, then (after a rollup run) from rollups: they must agree."""
    before = await customer.usage(**body)
    run = await roll_up_now(engine)
    after = await customer.usage(**body)
    assert after == before
    assert run.until is not None
    return after


def _assert_contiguous_days(rows: list[dict[str, Any]], zone: str) -> list[timedelta]:
    tz = ZoneInfo(zone)
    for row, following in pairwise(rows):
        assert row["windowEnd"] == following["windowStart"]
    lengths = []
    for row in rows:
        start, end = _at(row["windowStart"]), _at(row["windowEnd"])
        assert start.astimezone(tz).time().isoformat() == "00:00:00", row
        assert end.astimezone(tz).time().isoformat() == "00:00:00", row
        lengths.append(end - start)
    return lengths


async def test_day_windows_across_both_dst_transitions(
    admin: httpx.AsyncClient, client: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    customer = await new_customer(admin, client)
    cases = {
        # zone: [(first local midnight in UTC, days), …] around spring-forward and fall-back
        "America/Los_Angeles": [
            (datetime(2025, 3, 8, 8, tzinfo=UTC), [24, 23, 24]),
            (datetime(2025, 11, 1, 7, tzinfo=UTC), [24, 25, 24]),
        ],
        "Europe/Berlin": [
            (datetime(2025, 3, 28, 23, tzinfo=UTC), [24, 23, 24]),
            (datetime(2025, 10, 24, 22, tzinfo=UTC), [24, 25, 24]),
        ],
    }
    for zone, transitions in cases.items():
        for start, hours in transitions:
            end = start + timedelta(hours=sum(hours))
            # One event per UTC hour: a day's count is its length in hours.
            await ingest(admin, [customer.event(_z(t)) for t in _hourly(start, end)])
            body = {
                "start_time": _z(start),
                "end_time": _z(end),
                "window_size": "DAY",
                "window_timezone": zone,
            }
            result = await _both_ways(clean_db, customer, **body)
            rows = result["data"]
            assert [r["requests"] for r in rows] == hours
            lengths = _assert_contiguous_days(rows, zone)
            assert lengths == [timedelta(hours=h) for h in hours]
            assert [Decimal(r["cost"]) for r in rows] == [COST * h for h in hours]
            assert rows[0]["windowStart"] == _z(start) and rows[-1]["windowEnd"] == _z(end)
            assert result["window_size"] == "DAY"
            assert result["start_time"] == _z(start) and result["end_time"] == _z(end)
    # And the whole stretch at once: only windows with usage appear, in order.
    whole = await customer.usage(
        start_time="2025-03-01T00:00:00Z",
        end_time="2025-12-01T00:00:00Z",
        window_timezone="America/Los_Angeles",
    )
    starts = [r["windowStart"] for r in whole["data"]]
    assert starts == sorted(starts) and len(starts) == len(set(starts))
    assert sum(r["requests"] for r in whole["data"]) == 2 * (71 + 73)


async def test_half_and_quarter_hour_zones_start_days_at_local_midnight(
    admin: httpx.AsyncClient, client: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    customer = await new_customer(admin, client)
    start = datetime(2025, 5, 1, tzinfo=UTC)
    await ingest(admin, [customer.event(_z(t)) for t in _hourly(start, start + timedelta(days=3))])
    for zone, midnight_utc in (("Asia/Kolkata", "18:30:00Z"), ("Asia/Kathmandu", "18:15:00Z")):
        result = await _both_ways(
            clean_db,
            customer,
            start_time="2025-05-01T00:00:00Z",
            end_time="2025-05-04T00:00:00Z",
            window_timezone=zone,
        )
        rows = result["data"]
        assert len(rows) == 4  # a partial first and last local day
        for row in rows:
            assert row["windowStart"].endswith(midnight_utc)
            assert row["windowEnd"].endswith(midnight_utc)
            assert _at(row["windowStart"]).astimezone(ZoneInfo(zone)).hour == 0
        assert sum(r["requests"] for r in rows) == 72
        # HOUR windows in Kathmandu start at a quarter past the UTC hour.
        hours = await _both_ways(
            clean_db,
            customer,
            start_time="2025-05-02T00:00:00Z",
            end_time="2025-05-02T06:00:00Z",
            window_size="HOUR",
            window_timezone=zone,
        )
        offset = "30:00Z" if zone == "Asia/Kolkata" else "15:00Z"
        assert all(r["windowStart"].endswith(offset) for r in hours["data"])
        assert sum(r["requests"] for r in hours["data"]) == 6


async def test_hour_and_minute_windows(
    admin: httpx.AsyncClient, client: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    customer = await new_customer(admin, client)
    times = [
        "2025-07-01T10:00:00Z",
        "2025-07-01T10:00:59Z",
        "2025-07-01T10:01:00Z",
        "2025-07-01T10:59:59.999Z",
        "2025-07-01T11:30:00Z",
        "2025-07-01T13:05:00Z",
    ]
    await ingest(admin, [customer.event(t) for t in times])
    hours = await _both_ways(
        clean_db,
        customer,
        start_time="2025-07-01T10:00:00Z",
        end_time="2025-07-01T14:00:00Z",
        window_size="HOUR",
    )
    assert [(r["windowStart"], r["windowEnd"], r["requests"]) for r in hours["data"]] == [
        ("2025-07-01T10:00:00Z", "2025-07-01T11:00:00Z", 4),
        ("2025-07-01T11:00:00Z", "2025-07-01T12:00:00Z", 1),
        ("2025-07-01T13:00:00Z", "2025-07-01T14:00:00Z", 1),
    ]
    minutes = await _both_ways(
        clean_db,
        customer,
        start_time="2025-07-01T10:00:00Z",
        end_time="2025-07-01T11:00:00Z",
        window_size="MINUTE",
    )
    assert [(r["windowStart"], r["requests"]) for r in minutes["data"]] == [
        ("2025-07-01T10:00:00Z", 2),
        ("2025-07-01T10:01:00Z", 1),
        ("2025-07-01T10:59:00Z", 1),
    ]
    assert minutes["data"][0]["windowEnd"] == "2025-07-01T10:01:00Z"
    # [start_time, end_time) with unaligned bounds: the edges are exact too.
    edges = await _both_ways(
        clean_db,
        customer,
        start_time="2025-07-01T10:00:30Z",
        end_time="2025-07-01T13:05:00Z",
        window_size="HOUR",
    )
    assert [r["requests"] for r in edges["data"]] == [3, 1]
    assert edges["data"][0]["windowStart"] == "2025-07-01T10:00:00Z"  # windows stay aligned


async def test_group_by_and_filter_on_every_field(
    admin: httpx.AsyncClient, client: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    customer = await new_customer(admin, client)
    t = "2025-08-01T12:00:00Z"
    await ingest(
        admin,
        [
            customer.event(t, model="llama-3.1-8b", user="alice", api_key_id=customer.key_id),
            customer.event(t, model="llama-3.1-8b", user="bob"),
            customer.event(t, model="LLAMA-3-3-70B-online", user="alice"),  # alias, any case
            customer.event(t, model="llama-3.3-70b", endpoint="/v1/completions", user=""),
        ],
    )
    base = {"start_time": "2025-08-01T00:00:00Z", "end_time": "2025-08-02T00:00:00Z"}

    by_model = await _both_ways(clean_db, customer, **base, group_by=["model"])
    assert [(r["groupBy"], r["requests"], r["search_requests"]) for r in by_model["data"]] == [
        ({"model": "llama-3.1-8b"}, 2, 0),
        ({"model": "llama-3.3-70b"}, 1, 0),
        ({"model": "llama-3.3-70b-online"}, 1, 1),
    ]
    assert Decimal(by_model["data"][2]["cost"]) == Decimal("0.0012") + Decimal("0.006")
    by_user = await customer.usage(**base, group_by=["user"])
    assert [(r["groupBy"]["user"], r["requests"]) for r in by_user["data"]] == [
        ("", 1),
        ("alice", 2),
        ("bob", 1),
    ]
    by_key = await customer.usage(**base, group_by=["api_key_id"])
    assert [(r["groupBy"]["api_key_id"], r["requests"]) for r in by_key["data"]] == [
        (None, 3),
        (customer.key_id, 1),
    ]
    by_endpoint = await customer.usage(**base, group_by=["endpoint", "model"])
    assert [list(r["groupBy"].values()) for r in by_endpoint["data"]] == [
        ["/v1/chat/completions", "llama-3.1-8b"],
        ["/v1/chat/completions", "llama-3.3-70b-online"],
        ["/v1/completions", "llama-3.3-70b"],
    ]
    assert list(by_endpoint["data"][0]["groupBy"]) == ["endpoint", "model"]  # request order

    async def total(**filters: list[Any]) -> int:
        result = await customer.usage(**base, filter_group_by=filters)
        return sum(r["requests"] for r in result["data"])

    assert await total(model=["llama-3-1-8b"]) == 2  # matched through the alias
    assert await total(model=["llama-3.3-70b-online", "llama-3.3-70b"]) == 2
    assert await total(user=["alice"]) == 2
    assert await total(user=["al\x00ice"]) == 2  # NUL dropped, as from the users stored
    assert await total(user=[""]) == 1
    assert await total(api_key_id=[customer.key_id]) == 1
    assert await total(api_key_id=[None]) == 3
    assert await total(endpoint=["/v1/completions"]) == 1
    assert await total(user=["alice"], model=["llama-3.1-8b"]) == 1
    assert await total(model=[]) == 0
    # groupBy is {} without group_by; user_id is the account either way.
    plain = await customer.usage(**base)
    assert [(r["groupBy"], r["user_id"], r["requests"]) for r in plain["data"]] == [
        ({}, customer.id, 4)
    ]
    row = plain["data"][0]
    assert set(row) == {
        "groupBy",
        "user_id",
        "input_token",
        "output_token",
        "requests",
        "images",
        "search_requests",
        "cost",
        "currency",
        "windowStart",
        "windowEnd",
    }
    assert (row["input_token"], row["output_token"], row["currency"]) == (4000, 2000, "EUR")


async def test_a_key_never_sees_another_accounts_usage(
    admin: httpx.AsyncClient, client: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    alice = await new_customer(admin, client, "Alice")
    bob = await new_customer(admin, client, "Bob")
    t = "2025-09-01T08:00:00Z"
    await ingest(admin, [alice.event(t)] + [bob.event(t) for _ in range(3)])
    base = {"start_time": "2025-09-01T00:00:00Z", "end_time": "2025-09-02T00:00:00Z"}
    for _ in range(2):
        for customer, count in ((alice, 1), (bob, 3)):
            rows = (await customer.usage(**base))["data"]
            assert [(r["user_id"], r["requests"]) for r in rows] == [(customer.id, count)]
            # Filtering by another account's key or asking for user_id changes nothing.
            other = bob if customer is alice else alice
            filtered = await customer.usage(**base, filter_group_by={"api_key_id": [other.key_id]})
            assert filtered["data"] == []
            response = await client.post(
                "/v1/usage/completions",
                json={**base, "group_by": ["user_id"]},
                headers={"Authorization": f"Bearer {customer.key}"},
            )
            assert response.status_code == 400
        await roll_up_now(clean_db)
    # The admin query sees both, by account.
    response = await admin.post("/admin/usage/completions", json={**base, "group_by": ["user_id"]})
    assert response.status_code == 200, response.text
    rows = response.json()["data"]
    assert sorted((r["groupBy"]["user_id"], r["user_id"], r["requests"]) for r in rows) == sorted(
        [(alice.id, alice.id, 1), (bob.id, bob.id, 3)]
    )
    response = await admin.post(
        "/admin/usage/completions", json={**base, "filter_group_by": {"user_id": [bob.id]}}
    )
    assert [(r["user_id"], r["requests"]) for r in response.json()["data"]] == [(bob.id, 3)]
    response = await admin.post("/admin/usage/completions", json=base)
    assert [(r["user_id"], r["requests"]) for r in response.json()["data"]] == [(None, 4)]
    # Customers cannot use the admin query.
    response = await client.post(
        "/admin/usage/completions", json=base, headers={"Authorization": f"Bearer {alice.key}"}
    )
    assert response.status_code == 401


async def test_the_same_event_sent_a_thousand_times_counts_once(
    admin: httpx.AsyncClient, client: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    customer = await new_customer(admin, client)
    event = customer.event("2025-10-01T09:30:00Z", id="evt-once")
    # 20 concurrent requests, each with the event 50 times: 1,000 deliveries.
    results = await asyncio.gather(*(ingest(admin, [event] * 50) for _ in range(20)))
    assert sum(r["inserted"] for r in results) == 1
    assert sum(r["duplicates"] for r in results) == 999
    base = {"start_time": "2025-10-01T00:00:00Z", "end_time": "2025-10-02T00:00:00Z"}
    for _ in range(2):
        rows = (await customer.usage(**base))["data"]
        assert [(r["requests"], r["cost"]) for r in rows] == [(1, "0.0003")]
        await roll_up_now(clean_db)
    account = (await admin.get(f"/admin/accounts/{customer.id}")).json()
    assert account["balance"] == "-0.0003"


async def test_a_late_event_into_a_rolled_up_window_is_counted(
    admin: httpx.AsyncClient, client: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    customer = await new_customer(admin, client)
    base = {
        "start_time": "2025-06-01T00:00:00Z",
        "end_time": "2025-06-03T00:00:00Z",
        "window_size": "DAY",
        "window_timezone": "Europe/Berlin",
    }
    await ingest(admin, [customer.event("2025-06-01T10:00:00Z")])
    await roll_up_now(clean_db)
    assert [r["requests"] for r in (await customer.usage(**base))["data"]] == [1]
    # Months later, an event for that same (already rolled-up) bucket arrives.
    await ingest(admin, [customer.event("2025-06-01T10:05:00Z", prompt_tokens=9)])
    fresh = (await customer.usage(**base))["data"]
    assert [(r["requests"], r["input_token"]) for r in fresh] == [(2, 1009)]
    run = await roll_up_now(clean_db)
    assert run.events == 1
    assert (await customer.usage(**base))["data"] == fresh
    async with clean_db.connect() as connection:
        folded = await connection.execute(
            text(
                "SELECT bucket_minutes, bucket, requests FROM usage_rollups WHERE account_id = :a "
                "ORDER BY bucket_minutes"
            ),
            {"a": customer.id},
        )
        folded_rows = [tuple(row) for row in folded]
    assert [(m, b.isoformat(), r) for m, b, r in folded_rows] == [
        (15, "2025-06-01T10:00:00+00:00", 2),
        (60, "2025-06-01T10:00:00+00:00", 2),
    ]


async def test_rolled_up_part_is_read_from_rollups(
    admin: httpx.AsyncClient, client: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    """White box: once rolled up, the whole buckets are answered from rollups (deleting their raw
    events changes nothing) while the edges still come from raw events."""
    customer = await new_customer(admin, client)
    await ingest(
        admin,
        [
            customer.event(t)
            for t in ("2025-04-01T10:05:00Z", "2025-04-01T11:00:00Z", "2025-04-01T11:50:00Z")
        ],
    )
    await roll_up_now(clean_db)
    async with clean_db.begin() as connection:
        await connection.execute(
            text("DELETE FROM usage_events WHERE account_id = :a AND time = '2025-04-01T11:00Z'"),
            {"a": customer.id},
        )
    result = await customer.usage(
        start_time="2025-04-01T10:10:00Z", end_time="2025-04-01T11:55:00Z", window_size="HOUR"
    )
    # 10:05 is before start_time; 11:00 comes from its bucket; 11:50 from the raw edge.
    assert [(r["windowStart"], r["requests"]) for r in result["data"]] == [
        ("2025-04-01T11:00:00Z", 2)
    ]
