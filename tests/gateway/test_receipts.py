"""Receipts (SPEC 3.1): the exact charge on every non-stream response, and with OpenRouter's
`"usage": {"include": true}` the cost and its details in the usage (a stream's final chunk,
sent after the settlement commits and before `[DONE]`)."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import httpx
import openai
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.gateway.conftest import events
from tests.support.upstream import FakeUpstream

HELLO = [{"role": "user", "content": "Say this is a test!"}]
DETAILS = {"input", "cached_input", "output", "search", "images"}


def _check_receipt(usage: dict[str, Any], cost: Decimal) -> None:
    assert Decimal(usage["cost"]) == cost
    assert usage["currency"] == "EUR" and usage["price_version"] == "2025-01-01"
    details = usage["cost_details"]
    assert set(details) >= DETAILS
    assert all(isinstance(value, str) for value in details.values())
    assert sum(Decimal(value) for value in details.values()) == cost


async def test_every_non_stream_response_carries_its_exact_cost(
    raw: httpx.AsyncClient, funded: tuple[dict[str, Any], str], clean_db: AsyncEngine
) -> None:
    response = await raw.post(
        "/v1/chat/completions", json={"model": "llama-3.3-70b-online", "messages": HELLO}
    )
    assert response.status_code == 200, response.text
    [event] = await events(clean_db, funded[0]["id"])
    assert Decimal(response.headers["x-tollgate-cost"]) == event.cost > 0
    assert "cost" not in response.json()["usage"]  # only when asked for
    failed = await raw.post(
        "/v1/chat/completions",
        json={"model": "llama-3.3-70b", "messages": HELLO, "user": "behaviour:error-400"},
    )
    assert failed.status_code == 400 and failed.headers["x-tollgate-cost"] == "0.00"


async def test_usage_include_puts_the_receipt_in_the_usage_and_is_not_forwarded(
    sdk: openai.AsyncOpenAI,
    funded: tuple[dict[str, Any], str],
    upstream: FakeUpstream,
    clean_db: AsyncEngine,
) -> None:
    reply = await sdk.chat.completions.create(
        model="llama-3.3-70b-online", messages=HELLO, extra_body={"usage": {"include": True}}
    )
    [event] = await events(clean_db, funded[0]["id"])
    usage = reply.usage.model_dump()  # type: ignore[union-attr]
    assert usage["prompt_tokens"] == event.prompt_tokens
    _check_receipt(usage, event.cost)
    assert Decimal(usage["cost_details"]["search"]) == Decimal("0.006")
    assert "usage" not in upstream.requests[-1].body


async def _stream_events(raw: httpx.AsyncClient, body: dict[str, Any]) -> list[Any]:
    chunks: list[Any] = []
    async with raw.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                data = line.removeprefix("data: ")
                chunks.append(data if data == "[DONE]" else json.loads(data))
    return chunks


async def test_a_stream_ends_with_its_receipt_before_done(
    raw: httpx.AsyncClient, funded: tuple[dict[str, Any], str], clean_db: AsyncEngine
) -> None:
    for options in ({}, {"stream_options": {"include_usage": True}}):
        chunks = await _stream_events(
            raw,
            {
                "model": "llama-3.3-70b",
                "messages": HELLO,
                "stream": True,
                "usage": {"include": True},
                **options,
            },
        )
        assert chunks[-1] == "[DONE]"
        final = chunks[-2]
        assert final["choices"] == [] and final["id"] == chunks[0]["id"]
        # One usage chunk, the receipt's: the upstream's own is not relayed as well.
        assert [c for c in chunks[:-2] if isinstance(c, dict) and c.get("usage")] == []
        event = (await events(clean_db, funded[0]["id"]))[-1]
        assert final["usage"]["completion_tokens"] == event.completion_tokens
        _check_receipt(final["usage"], event.cost)


async def test_a_stream_without_upstream_usage_gets_the_receipt_of_the_gateways_count(
    raw: httpx.AsyncClient, funded: tuple[dict[str, Any], str], clean_db: AsyncEngine
) -> None:
    chunks = await _stream_events(
        raw,
        {
            "model": "llama-3.3-70b",
            "messages": HELLO,
            "stream": True,
            "usage": {"include": True},
            "user": "behaviour:no-usage",
        },
    )
    [event] = await events(clean_db, funded[0]["id"])
    assert event.usage_source == "estimated"
    usage = chunks[-2]["usage"]
    assert usage["prompt_tokens"] == event.prompt_tokens
    assert usage["total_tokens"] == event.prompt_tokens + event.completion_tokens
    _check_receipt(usage, event.cost)


async def test_a_generation_is_found_by_its_request_id_by_its_own_account_only(
    raw: httpx.AsyncClient,
    admin: httpx.AsyncClient,
    funded: tuple[dict[str, Any], str],
    clean_db: AsyncEngine,
) -> None:
    response = await raw.post(
        "/v1/chat/completions",
        json={"model": "llama-3.3-70b-online", "messages": HELLO, "user": "alice"},
    )
    assert response.status_code == 200, response.text
    request_id = response.headers["x-request-id"]
    # As soon as the response has ended: no waiting.
    found = await raw.get(f"/v1/generations/{request_id}")
    assert found.status_code == 200, found.text
    data = found.json()["data"]
    [event] = await events(clean_db, funded[0]["id"])
    assert data["id"] == request_id
    assert data["model"] == "llama-3.3-70b-online" and data["endpoint"] == "/v1/chat/completions"
    assert data["api_key_id"] == str(event.api_key_id) and data["user"] == "alice"
    assert (data["prompt_tokens"], data["completion_tokens"]) == (
        event.prompt_tokens,
        event.completion_tokens,
    )
    assert data["search_requests"] == 1 and data["images"] == 0
    assert data["cost"] == response.headers["x-tollgate-cost"]
    _check_receipt(data, event.cost)
    assert (data["usage_source"], data["outcome"]) == ("upstream", "completed")
    assert data["upstream"] == "default"
    assert isinstance(data["duration_ms"], int) and data["duration_ms"] >= 0
    assert data["created"].endswith("Z")
    # Another account's key sees nothing; an unknown id neither.
    other = (await admin.post("/admin/accounts", json={"name": "Other"})).json()
    other_key = (await admin.post(f"/admin/accounts/{other['id']}/keys", json={})).json()["key"]
    hidden = await raw.get(
        f"/v1/generations/{request_id}", headers={"Authorization": f"Bearer {other_key}"}
    )
    assert hidden.status_code == 404 and hidden.json()["error"]["code"] == "not_found"
    assert (await raw.get("/v1/generations/req_nope")).status_code == 404


async def test_a_streamed_generation_is_found_too(
    raw: httpx.AsyncClient, funded: tuple[dict[str, Any], str]
) -> None:
    async with raw.stream(
        "POST",
        "/v1/chat/completions",
        json={"model": "llama-3.3-70b", "messages": HELLO, "stream": True},
        headers={"x-request-id": "client-chosen-id-1"},
    ) as response:
        assert response.headers["x-request-id"] == "client-chosen-id-1"
        await response.aread()
    found = await raw.get("/v1/generations/client-chosen-id-1")
    assert found.status_code == 200, found.text
    assert found.json()["data"]["outcome"] == "completed"
