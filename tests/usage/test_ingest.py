"""`POST /admin/events`: priced at the rates in force at each event's time, deducted through the
same settlement as proxied usage, idempotent per (account, id), all or nothing per batch."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.pricing import (
    Endpoint,
    Usage,
    charge_json,
    charge_to_json,
    format_money,
    load_catalog,
    price,
)
from tests.conftest import ADMIN_TOKEN
from tests.support.live import LiveServer
from tests.usage.conftest import Customer, ingest, new_customer


async def _balance(admin: httpx.AsyncClient, customer: Customer) -> Decimal:
    return Decimal((await admin.get(f"/admin/accounts/{customer.id}")).json()["balance"])


async def _count_events(engine: AsyncEngine, customer: Customer) -> int:
    async with engine.connect() as connection:
        count = await connection.scalar(
            text("SELECT count(*) FROM usage_events WHERE account_id = :a"), {"a": customer.id}
        )
    return int(count or 0)


async def _ledger(engine: AsyncEngine, customer: Customer) -> list[tuple[str, Decimal, str]]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            text(
                "SELECT kind, amount, reference FROM ledger_entries WHERE account_id = :a "
                "ORDER BY reference"
            ),
            {"a": customer.id},
        )
        return [(r.kind, r.amount, r.reference) for r in rows]


async def test_a_batch_with_one_invalid_event_inserts_nothing(
    admin: httpx.AsyncClient, client: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    customer = await new_customer(admin, client)
    good = [customer.event("2025-05-01T10:00:00Z") for _ in range(5)]
    cases: list[tuple[dict[str, Any], str]] = [
        ({"time": "2999-01-01T00:00:00Z"}, "time"),  # future
        ({"time": "2025-05-01T10:00:00"}, "time"),  # no offset
        ({"prompt_tokens": -1}, "prompt_tokens"),
        ({"prompt_tokens": 1.5}, "prompt_tokens"),
        ({"cached_tokens": 2000}, "cached_tokens"),  # more than prompt_tokens
        ({"model": "gpt-17"}, "model"),
        ({"time": "2024-06-01T00:00:00Z"}, "model"),  # before any price was in force
        ({"endpoint": "/v1/audio/speech"}, "endpoint"),
        ({"endpoint": "/v1/embeddings"}, "model"),  # llama is not priced for embeddings
        ({"search_requests": 2}, "search_requests"),  # no search fee on the base model
        ({"account_id": "5b0c1a43-5cc5-4d55-9a3c-3f0c8b3d7c11"}, "account_id"),
        ({"api_key_id": "5b0c1a43-5cc5-4d55-9a3c-3f0c8b3d7c11"}, "api_key_id"),
        ({"colour": "red"}, "events[3]"),
        ({"id": ""}, "id"),
        ({"id": "a\x00b"}, "id"),  # Postgres text cannot hold NUL
        ({"user": "a\x00b"}, "user"),
        ({"user": "u" * 257}, "user"),  # a usage group and a spend-limit key (SPEC 3.1)
        ({"prompt_tokens": 2**64}, "prompt_tokens"),
    ]
    for change, field in cases:
        batch = [dict(e) for e in good]
        batch[3] = {**batch[3], **change}
        response = await admin.post("/admin/events", json={"events": batch})
        assert response.status_code == 400, (change, response.text)
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error"
        assert error["code"] == "invalid_events"
        assert error["param"].startswith("events[3]") and field in error["param"], (change, error)
        assert "events[3]" in error["message"]
        assert [p["index"] for p in error["invalid_events"]] == [3], (change, error)
        assert error["invalid_events"][0]["reason"], error
    # Missing fields and several bad events are all listed.
    batch = [dict(e) for e in good]
    del batch[1]["model"]
    batch[4]["time"] = "soon"
    response = await admin.post("/admin/events", json={"events": batch})
    error = response.json()["error"]
    assert [(p["index"], p["param"]) for p in error["invalid_events"]] == [
        (1, "events[1].model"),
        (4, "events[4].time"),
    ]
    assert error["invalid_count"] == 2
    assert await _count_events(clean_db, customer) == 0
    assert await _ledger(clean_db, customer) == []
    assert await _balance(admin, customer) == 0
    # And the good batch goes in whole.
    assert await ingest(admin, good) == {"inserted": 5, "duplicates": 0}
    assert await _count_events(clean_db, customer) == 5


async def test_malformed_bodies(admin: httpx.AsyncClient) -> None:
    for body in (b"{", b"[]", b'{"events": {}}', b'{"events": [], "more": 1}', b"{}"):
        response = await admin.post(
            "/admin/events", content=body, headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 400, body
    assert await ingest(admin, []) == {"inserted": 0, "duplicates": 0}


async def test_admin_token_required(admin: httpx.AsyncClient, client: httpx.AsyncClient) -> None:
    customer = await new_customer(admin, client)
    body = {"events": [customer.event("2025-05-01T10:00:00Z")]}
    for headers in ({}, {"Authorization": f"Bearer {customer.key}"}):
        response = await client.post("/admin/events", json=body, headers=headers)
        assert response.status_code == 401


async def test_balances_move_exactly_by_the_priced_costs(
    admin: httpx.AsyncClient, client: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    customer = await new_customer(admin, client)
    response = await admin.post(
        f"/admin/accounts/{customer.id}/credits", json={"amount": "10.00", "kind": "grant"}
    )
    assert response.status_code == 201
    t = "2025-05-01T10:00:00Z"
    events = [
        # 6M + 2M tokens of llama-3.1-8b: exactly €1.60 (seed 000's example)
        customer.event(t, id="a", prompt_tokens=6_000_000, completion_tokens=2_000_000),
        # cached tokens are billed as input (no cached price); one web search on -online
        customer.event(
            t,
            id="b",
            model="llama-3.3-70b-online",
            prompt_tokens=1234,
            cached_tokens=1000,
            completion_tokens=77,
        ),
        # an explicit 0 searches means no fee; 3 searches, 3 fees
        customer.event(
            t,
            id="c",
            model="llama-3.3-70b-deep",
            prompt_tokens=1,
            completion_tokens=0,
            search_requests=0,
        ),
        customer.event(
            t,
            id="d",
            model="llama-3.3-70b-deep",
            prompt_tokens=1,
            completion_tokens=0,
            search_requests=3,
        ),
        # images at pixtral's per-image fee
        customer.event(
            t,
            id="e",
            model="pixtral-12b-2409",
            prompt_tokens=100,
            completion_tokens=10,
            images=4,
            user="u-1",
            api_key_id=customer.key_id,
        ),
    ]
    expected = {
        "a": Decimal("1.60"),
        "b": Decimal("0.0010488") + Decimal("0.006"),
        "c": Decimal("0.0000008"),
        "d": Decimal("0.0000008") + Decimal("0.036"),
        "e": Decimal("0.0000385") + Decimal("0.004"),
    }
    assert await ingest(admin, events) == {"inserted": 5, "duplicates": 0}
    total = sum(expected.values(), Decimal(0))
    assert await _balance(admin, customer) == Decimal("10.00") - total
    ledger = await _ledger(clean_db, customer)
    assert [(kind, -amount, ref) for kind, amount, ref in ledger if kind == "usage"] == [
        ("usage", expected[k], f"usage:ext:{k}") for k in "abcde"
    ]
    async with clean_db.connect() as connection:
        rows = await connection.execute(
            text(
                "SELECT event_key, cost, search_requests, images, usage_source, price_version, "
                "charge->>'total' AS total, model FROM usage_events WHERE account_id = :a "
                "ORDER BY event_key"
            ),
            {"a": customer.id},
        )
        stored = {r.event_key: r for r in rows}
    assert {k: stored[f"ext:{k}"].cost for k in "abcde"} == expected
    assert stored["ext:b"].search_requests == 1 and stored["ext:c"].search_requests == 0
    assert stored["ext:e"].images == 4
    assert {r.usage_source for r in stored.values()} == {"ingested"}
    assert {r.price_version for r in stored.values()} == {"2025-01-01"}
    assert Decimal(stored["ext:a"].total) == Decimal("1.60")
    credits = (
        await client.get("/v1/credits", headers={"Authorization": f"Bearer {customer.key}"})
    ).json()["data"]
    assert Decimal(credits["total_usage"]) == total
    # The usage query sums the same costs exactly.
    usage = await customer.usage(start_time="2025-05-01T00:00:00Z", end_time="2025-05-02T00:00:00Z")
    assert [
        (Decimal(r["cost"]), r["requests"], r["search_requests"], r["images"])
        for r in usage["data"]
    ] == [(total, 5, 4, 4)]
    # Replays change nothing, also mixed with new events.
    again = await ingest(admin, [*events, customer.event(t, id="f")])
    assert again == {"inserted": 1, "duplicates": 5}
    assert await _balance(admin, customer) == Decimal("10.00") - total - Decimal("0.0003")


@pytest.fixture
async def repriced_admin(
    usage_servers: dict[str, LiveServer], clean_db: AsyncEngine
) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=usage_servers["repriced"].url,
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=60,
    ) as client:
        yield client


async def test_prices_in_force_at_the_event_time_are_used(
    repriced_admin: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    """From 2025-06-01 llama-3.1-8b costs €0.30/€0.60 and `-online` €7 per 1,000 (fixture)."""
    customer = await new_customer(repriced_admin, repriced_admin)
    events = [
        customer.event("2025-05-31T23:59:59.999999Z", id="old"),
        customer.event("2025-06-01T00:00:00Z", id="new"),
        customer.event("2025-06-01T00:00:00+02:00", id="old-by-offset"),  # 22:00 UTC, May 31
        customer.event("2025-07-01T00:00:00Z", id="new-online", model="llama-3.1-8b-online"),
        customer.event("2025-06-02T00:00:00Z", id="retired", model="llama-3.3-70b"),
    ]
    response = await repriced_admin.post("/admin/events", json={"events": events})
    assert response.status_code == 400  # llama-3.3-70b is not priced from June on
    assert response.json()["error"]["param"] == "events[4].model"
    assert await ingest(repriced_admin, events[:4]) == {"inserted": 4, "duplicates": 0}
    async with clean_db.connect() as connection:
        rows = await connection.execute(
            text("SELECT event_key, cost, price_version FROM usage_events WHERE account_id = :a"),
            {"a": customer.id},
        )
        stored = {r.event_key: (r.cost, r.price_version) for r in rows}
    assert stored == {
        "ext:old": (Decimal("0.0003"), "2025-01-01"),
        "ext:old-by-offset": (Decimal("0.0003"), "2025-01-01"),
        "ext:new": (Decimal("0.0006"), "2025-06-01"),  # 1,000 × 0.30 + 500 × 0.60 per million
        "ext:new-online": (Decimal("0.0076"), "2025-06-01"),
    }
    assert await _balance(repriced_admin, customer) == -Decimal("0.0088")


async def test_an_id_repeated_in_one_batch_counts_its_first_copy_once(
    admin: httpx.AsyncClient, client: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    """The event, its ledger entry and the balance all take the same (first) copy."""
    customer = await new_customer(admin, client)
    t = "2025-05-01T10:00:00Z"
    batch = [
        customer.event(t, id="twice", prompt_tokens=1_000_000, completion_tokens=0),
        customer.event(t, id="other"),
        customer.event(t, id="twice", prompt_tokens=5_000_000, completion_tokens=0),
    ]
    assert await ingest(admin, batch) == {"inserted": 2, "duplicates": 1}
    async with clean_db.connect() as connection:
        rows = await connection.execute(
            text(
                "SELECT e.prompt_tokens, e.cost, l.amount FROM usage_events e "
                "JOIN ledger_entries l ON l.account_id = e.account_id AND l.id = e.id "
                "WHERE e.account_id = :a AND e.event_key = 'ext:twice'"
            ),
            {"a": customer.id},
        )
        stored = [tuple(row) for row in rows]
    assert stored == [(1_000_000, Decimal("0.2"), Decimal("-0.2"))]  # €0.20 per million
    assert await _balance(admin, customer) == -Decimal("0.2") - Decimal("0.0003")


async def test_back_dated_events_get_their_month_partitions(
    admin: httpx.AsyncClient, client: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    customer = await new_customer(admin, client)
    times = ["2025-01-01T00:00:00Z", "2025-02-28T23:59:59Z", "2025-03-01T00:30:00+01:00"]
    assert (await ingest(admin, [customer.event(t) for t in times]))["inserted"] == 3
    async with clean_db.connect() as connection:
        partitions = await connection.scalars(
            text(
                "SELECT tableoid::regclass::text FROM usage_events WHERE account_id = :a "
                "ORDER BY time"
            ),
            {"a": customer.id},
        )
        assert list(partitions) == [
            "usage_events_2025_01",
            "usage_events_2025_02",
            "usage_events_2025_02",
        ]


FIXTURE_CATALOG = load_catalog(Path(__file__).parents[1] / "fixtures" / "pricing")


@settings(max_examples=300, deadline=None)
@given(
    model=st.sampled_from(
        [
            "llama-3.3-70b-online",
            "deepseek-r1-70b",
            "pixtral-12b-2409",
            "test-cached",
            "test-embed",
            "test-image",
            "llama-3.1-8b-deep",
        ]
    ),
    prompt=st.integers(0, 10**9),
    cached=st.integers(0, 10**9),
    completion=st.integers(0, 10**9),
    images=st.integers(0, 50),
    requests=st.integers(0, 3),
)
def test_fast_charge_json_is_the_pricing_engines_json(
    model: str, prompt: int, cached: int, completion: int, images: int, requests: int
) -> None:
    """The charge JSON is built from integer fragments (for speed): byte for byte what
    serialising the charge's Decimal lines gives."""
    resolved = FIXTURE_CATALOG.resolve(model, datetime(2025, 6, 1, tzinfo=UTC))
    endpoint = {"test-embed": Endpoint.EMBEDDINGS, "test-image": Endpoint.IMAGE_GENERATIONS}.get(
        model, Endpoint.CHAT
    )
    usage = Usage(
        endpoint=endpoint,
        prompt_tokens=prompt,
        cached_tokens=min(cached, prompt),
        completion_tokens=completion,
        images_in=images if endpoint == Endpoint.CHAT else 0,
        images_out=images if endpoint == Endpoint.IMAGE_GENERATIONS else 0,
        requests=requests,
    )
    charge = price(resolved, usage)
    reference = {
        "model": charge.model,
        "currency": charge.currency,
        "price_version": charge.price_version.isoformat(),
        "total": format_money(charge.total),
        "lines": [
            {
                "kind": line.kind,
                "quantity": line.quantity,
                "unit_price": format_money(line.unit_price),
                "per": line.per,
                "amount": format_money(line.amount),
            }
            for line in charge.lines
        ],
    }
    assert charge_json(charge) == msgspec.json.encode(reference)
    assert charge_to_json(charge) == reference
