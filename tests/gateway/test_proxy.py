"""The gateway with the official `openai` SDK as client and a real upstream on loopback."""

from __future__ import annotations

import asyncio
import json
import resource
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.gateway.conftest import events, totals
from tests.support.live import LiveServer
from tests.support.upstream import FakeUpstream

HELLO = [{"role": "user", "content": "Say this is a test!"}]


def per_million(price: str, tokens: int) -> Decimal:
    return Decimal(price) * tokens / 1_000_000


async def test_chat_matches_upstream_and_is_metered(
    sdk: openai.AsyncOpenAI,
    upstream: FakeUpstream,
    funded: tuple[dict[str, Any], str],
    clean_db: AsyncEngine,
) -> None:
    reply = await sdk.chat.completions.create(model="llama-3.3-70b", messages=HELLO, user="u-1")
    direct = await openai.AsyncOpenAI(base_url=upstream.url, api_key="x").chat.completions.create(
        model="llama-3.3-70b", messages=HELLO, user="u-1"
    )
    ignore = {"id", "created"}
    assert reply.model_dump(exclude=ignore) == direct.model_dump(exclude=ignore)
    sent = upstream.requests[0]
    assert sent.headers["authorization"] == "Bearer upstream-secret"  # never the customer's key
    assert sent.headers["content-type"] == "application/json"
    assert sent.body["user"] == "u-1"
    [event] = await events(clean_db, funded[0]["id"])
    assert event.prompt_tokens == reply.usage.prompt_tokens
    assert event.completion_tokens == reply.usage.completion_tokens
    assert event.usage_source == "upstream"
    assert event.user == "u-1"
    assert event.cost == per_million("0.80", reply.usage.prompt_tokens) + per_million(
        "0.80", reply.usage.completion_tokens
    )
    account = await totals(clean_db, funded[0]["id"])
    assert account.balance == Decimal("10") - event.cost == account.ledger
    assert account.held == 0 and account.holds == 0


async def test_a_nul_in_user_is_dropped_from_the_usage_event_not_the_request(
    sdk: openai.AsyncOpenAI,
    upstream: FakeUpstream,
    funded: tuple[dict[str, Any], str],
    clean_db: AsyncEngine,
) -> None:
    """JSON allows "\\u0000", Postgres text does not: the event must still be recorded."""
    await sdk.chat.completions.create(model="llama-3.3-70b", messages=HELLO, user="u-\x001")
    assert upstream.requests[0].body["user"] == "u-\x001"
    [event] = await events(clean_db, funded[0]["id"])
    assert event.user == "u-1" and event.outcome == "completed"


async def test_stream_and_non_stream_cost_the_same(
    sdk: openai.AsyncOpenAI, funded: tuple[dict[str, Any], str], clean_db: AsyncEngine
) -> None:
    await sdk.chat.completions.create(model="deepseek-r1-70b", messages=HELLO)
    stream = await sdk.chat.completions.create(model="deepseek-r1-70b", messages=HELLO, stream=True)
    chunks = [chunk async for chunk in stream]
    assert all(chunk.usage is None for chunk in chunks)  # hidden: the client did not ask
    plain, streamed = await events(clean_db, funded[0]["id"])
    assert plain.cost == streamed.cost > 0
    assert (plain.prompt_tokens, plain.completion_tokens) == (
        streamed.prompt_tokens,
        streamed.completion_tokens,
    )


async def test_usage_is_shown_when_the_client_asks(sdk: openai.AsyncOpenAI) -> None:
    stream = await sdk.chat.completions.create(
        model="llama-3.1-8b", messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[-1].usage is not None and chunks[-1].choices == []


async def test_usage_riding_on_a_choice_chunk_is_removed(
    sdk: openai.AsyncOpenAI, funded: tuple[dict[str, Any], str], clean_db: AsyncEngine
) -> None:
    stream = await sdk.chat.completions.create(
        model="llama-3.1-8b",
        messages=HELLO,
        stream=True,
        user="behaviour:usage-on-last-choice-chunk",
    )
    chunks = [chunk async for chunk in stream]
    assert chunks and all(chunk.usage is None for chunk in chunks)
    [event] = await events(clean_db, funded[0]["id"])
    assert event.usage_source == "upstream"


async def test_streams_are_relayed_before_the_upstream_finishes(
    raw: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    body = {"model": "llama-3.1-8b", "messages": HELLO, "stream": True, "user": "behaviour:long:40"}
    async with raw.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["x-ratelimit-limit-requests"] == "50"
        assert response.headers["x-request-id"]
        async for chunk in response.aiter_raw():
            if b"data:" in chunk:
                # The first event reached the client while the upstream was still streaming.
                assert upstream.active_streams >= 1
                break


async def test_search_suffix_is_forwarded_unchanged_and_charged(
    sdk: openai.AsyncOpenAI,
    upstream: FakeUpstream,
    funded: tuple[dict[str, Any], str],
    clean_db: AsyncEngine,
) -> None:
    reply = await sdk.chat.completions.create(model="llama-3.3-70b-online", messages=HELLO)
    assert reply.model_extra and reply.model_extra["links"]
    stream = await sdk.chat.completions.create(
        model="LLAMA-3-3-70B-deep", messages=HELLO, stream=True
    )
    first_links = None
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.model_extra.get("links"):
            first_links = chunk.choices[0].delta.model_extra["links"]
    assert first_links
    assert [r.body["model"] for r in upstream.requests] == [
        "llama-3.3-70b-online",
        "LLAMA-3-3-70B-deep",
    ]
    online, deep = await events(clean_db, funded[0]["id"])
    assert (online.model, deep.model) == ("llama-3.3-70b-online", "llama-3.3-70b-deep")
    assert online.search_requests == deep.search_requests == 1
    tokens_online = per_million("0.80", online.prompt_tokens + online.completion_tokens)
    assert online.cost == tokens_online + Decimal("0.006")
    tokens_deep = per_million("0.80", deep.prompt_tokens + deep.completion_tokens)
    assert deep.cost == tokens_deep + Decimal("0.012")


async def test_seed_example_thirteen_and_seven_tokens_online(
    raw: httpx.AsyncClient, funded: tuple[dict[str, Any], str], clean_db: AsyncEngine
) -> None:
    """Seed 000's response: 13 prompt and 7 completion tokens on llama-3.3-70b-online."""
    body = {"model": "llama-3.3-70b-online", "messages": HELLO, "user": "behaviour:usage:13:7"}
    response = await raw.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    [event] = await events(clean_db, funded[0]["id"])
    assert event.cost == Decimal("0.006016")


async def test_two_images_are_charged_as_two(
    sdk: openai.AsyncOpenAI, funded: tuple[dict[str, Any], str], clean_db: AsyncEngine
) -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    content = [{"type": "text", "text": "Compare these."}, image, image]
    reply = await sdk.chat.completions.create(
        model="pixtral-12b-2409", messages=[{"role": "user", "content": content}]
    )
    [event] = await events(clean_db, funded[0]["id"])
    assert event.images == 2
    tokens = per_million("0.35", reply.usage.prompt_tokens + reply.usage.completion_tokens)
    assert event.cost == tokens + Decimal("0.002")


async def test_dropped_stream_is_charged_for_what_was_produced(
    raw: httpx.AsyncClient,
    upstream: FakeUpstream,
    funded: tuple[dict[str, Any], str],
    clean_db: AsyncEngine,
) -> None:
    body = {
        "model": "llama-3.1-8b",
        "messages": HELLO,
        "stream": True,
        "user": "behaviour:long:200",
    }
    received = 0
    async with raw.stream("POST", "/v1/chat/completions", json=body) as response:
        async for chunk in response.aiter_raw():
            received += chunk.count(b"data:")
            if received >= 5:
                break  # leaving the block closes the connection mid-stream
    for _ in range(100):
        found = await events(clean_db, funded[0]["id"])
        if found:
            break
        await asyncio.sleep(0.05)
    [event] = found
    assert event.outcome == "client_disconnected"
    assert event.usage_source == "estimated"
    assert 0 < event.completion_tokens < 200
    for _ in range(100):
        if upstream.cancelled_streams:
            break
        await asyncio.sleep(0.05)
    assert upstream.cancelled_streams == 1  # the upstream request was cancelled too
    account = await totals(clean_db, funded[0]["id"])
    assert account.held == 0 and account.holds == 0
    assert account.balance == Decimal("10") - event.cost


async def test_broken_upstream_stream_is_charged_for_what_was_produced(
    sdk: openai.AsyncOpenAI, funded: tuple[dict[str, Any], str], clean_db: AsyncEngine
) -> None:
    with pytest.raises(openai.APIError):
        stream = await sdk.chat.completions.create(
            model="llama-3.1-8b", messages=HELLO, stream=True, user="behaviour:break-midway"
        )
        [chunk async for chunk in stream]
    [event] = await events(clean_db, funded[0]["id"])
    assert event.outcome == "upstream_broken"
    assert event.completion_tokens > 0
    assert (await totals(clean_db, funded[0]["id"])).holds == 0


async def test_upstream_error_passes_through_and_costs_nothing(
    raw: httpx.AsyncClient, funded: tuple[dict[str, Any], str], clean_db: AsyncEngine
) -> None:
    for behaviour, status in (("error-500", 500), ("error-429", 429), ("error-400", 400)):
        body = {"model": "llama-3.1-8b", "messages": HELLO, "user": f"behaviour:{behaviour}"}
        response = await raw.post("/v1/chat/completions", json=body)
        assert response.status_code == status
        assert response.json()["error"]["message"]
        assert response.headers["x-ratelimit-limit-requests"] == "50"
    assert await events(clean_db, funded[0]["id"]) == []
    account = await totals(clean_db, funded[0]["id"])
    assert account.balance == Decimal("10") and account.held == 0 and account.holds == 0


async def test_unpriced_model_is_refused_before_any_upstream_call(
    raw: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    for model in ("gpt-4o", "gpt-4o-online", "test-embed-online"):
        response = await raw.post("/v1/chat/completions", json={"model": model, "messages": HELLO})
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "model_not_found"
        assert response.json()["error"]["param"] == "model"
    assert upstream.requests == []


async def test_bad_bodies_are_400_and_never_forwarded(
    raw: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    cases = [
        (b"{not json", "invalid_json", None),
        (b'{"messages": []}', "missing_field", "model"),
        (b'{"model": "llama-3.1-8b"}', "missing_field", "messages"),
        (b'{"model": 5, "messages": []}', "invalid_type", "model"),
        (b'{"model": "llama-3.1-8b", "messages": "hi"}', "invalid_type", "messages"),
        (
            b'{"model": "llama-3.1-8b", "messages": [{"role": "user", "content": "x"}], "n": 0}',
            "invalid_value",
            "n",
        ),
    ]
    for content, code, param in cases:
        response = await raw.post(
            "/v1/chat/completions", content=content, headers={"content-type": "application/json"}
        )
        assert response.status_code == 400, content
        error = response.json()["error"]
        assert (error["code"], error["param"]) == (code, param), content
    assert upstream.requests == []


async def test_insufficient_credit_is_402_and_not_retried(
    proxy: LiveServer, admin: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    from tests.conftest import new_account_with_key

    _, key = await new_account_with_key(admin, credit="0.001")
    client = openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key=key, max_retries=2)
    with pytest.raises(openai.APIStatusError) as caught:
        await client.chat.completions.create(model="deepseek-r1-70b", messages=HELLO)
    response = caught.value.response
    assert response.status_code == 402
    assert response.headers["x-should-retry"] == "false"
    assert response.json()["error"]["code"] == "insufficient_quota"
    assert upstream.requests == []  # and the SDK did not retry


async def test_legacy_completion_without_max_tokens_holds_the_default_cap(
    proxy: LiveServer, admin: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    """SPEC 7: the hold assumes TOLLGATE_DEFAULT_MAX_TOKENS (4,096) output tokens when the
    request sets no cap, on the legacy endpoint too (whose documented default is 16)."""
    from tests.conftest import new_account_with_key

    # Covers a few prompt tokens and 16 output tokens of llama-3.1-8b, not 4,096 (€0.00082).
    _, key = await new_account_with_key(admin, credit="0.0001")
    client = openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key=key, max_retries=0)
    with pytest.raises(openai.APIStatusError) as caught:
        await client.completions.create(model="llama-3.1-8b", prompt="Hi")
    assert caught.value.status_code == 402
    assert upstream.requests == []
    capped = await client.completions.create(model="llama-3.1-8b", prompt="Hi", max_tokens=16)
    assert capped.choices


async def test_two_hundred_concurrent_streams_are_metered_exactly_once(
    proxy: LiveServer,
    funded: tuple[dict[str, Any], str],
    admin: httpx.AsyncClient,
    clean_db: AsyncEngine,
) -> None:
    account_id = funded[0]["id"]
    # Enough for the enterprise tier's 1,000 RPM.
    await admin.post(f"/admin/accounts/{account_id}/credits", json={"amount": "1000"})
    client = openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key=funded[1], max_retries=0)

    async def one(i: int) -> int:
        stream = await client.chat.completions.create(
            model="llama-3.1-8b",
            messages=[{"role": "user", "content": f"n{i}"}],
            stream=True,
            max_tokens=50,
        )
        return len([chunk async for chunk in stream])

    counts = await asyncio.gather(*(one(i) for i in range(200)))
    assert all(count > 0 for count in counts)
    found = await events(clean_db, account_id)
    assert len(found) == 200
    account = await totals(clean_db, account_id)
    assert account.balance == Decimal("1010") - sum(e.cost for e in found) == account.ledger
    assert account.held == 0 and account.holds == 0


async def test_a_fifty_megabyte_stream_is_never_buffered(
    raw: httpx.AsyncClient, funded: tuple[dict[str, Any], str], clean_db: AsyncEngine
) -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    body = {"model": "llama-3.1-8b", "messages": HELLO, "stream": True, "user": "behaviour:huge:50"}
    received = 0
    async with raw.stream("POST", "/v1/chat/completions", json=body) as response:
        async for chunk in response.aiter_raw():
            received += len(chunk)
    growth_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert received > 50 * 1024 * 1024
    # Upstream, gateway and client share this process: buffering would add ≥ 50 MiB.
    assert growth_mib < 25, growth_mib
    [event] = await events(clean_db, funded[0]["id"])
    assert event.outcome == "completed"


async def test_a_json_body_is_forwarded_as_json_whatever_its_declared_type(
    raw: httpx.AsyncClient, upstream: FakeUpstream, funded: tuple[dict[str, Any], str]
) -> None:
    body = json.dumps({"model": "llama-3.1-8b", "messages": HELLO}).encode()
    response = await raw.post(
        "/v1/chat/completions", content=body, headers={"content-type": "text/plain"}
    )
    assert response.status_code == 200, response.text
    assert upstream.requests[-1].headers["content-type"] == "application/json"
