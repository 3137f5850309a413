"""Prepaid credit and rate limits under concurrency, across instances and processes."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import coredis
import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from app.credits.tiers import Tier
from app.limits.service import RateLimiter
from tests.conftest import ADMIN_TOKEN, Gateways, new_account_with_key
from tests.gateway.conftest import FIXTURE_PRICING, events, totals
from tests.support.live import LiveServer
from tests.support.process import GatewayProcess
from tests.support.upstream import FakeUpstream

HELLO = [{"role": "user", "content": "Say this is a test!"}]
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="module")
def redis_url() -> str:
    where = urlsplit(REDIS_URL)
    try:
        socket.create_connection((where.hostname, where.port or 6379), timeout=1).close()
    except OSError:
        pytest.skip(f"no Redis at {REDIS_URL}")
    return REDIS_URL


async def _chat(client: httpx.AsyncClient, url: str, key: str, **extra: Any) -> httpx.Response:
    body = {"model": "deepseek-r1-70b", "messages": HELLO, "max_tokens": 1000, **extra}
    return await client.post(
        f"{url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
    )


async def _parallel_against_small_balance(
    urls: list[str], admin: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    # Each request may cost up to ~€0.0086 (1,000 output tokens at €8.50/M plus its prompt):
    # €0.045 covers five holds and not six.
    account, key = await new_account_with_key(admin, credit="0.045")
    async with httpx.AsyncClient(timeout=30) as client:
        responses = await asyncio.gather(
            *(
                _chat(client, urls[i % len(urls)], key, user="behaviour:slow-first-byte:1")
                for i in range(50)
            )
        )
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 5, statuses
    assert statuses.count(402) == 45
    found = await events(clean_db, account["id"])
    assert len(found) == 5
    after = await totals(clean_db, account["id"])
    assert Decimal("0.045") - after.balance == sum(e.cost for e in found)
    assert after.balance == after.ledger
    assert after.held == 0 and after.holds == 0


async def test_fifty_parallel_requests_against_a_balance_covering_five(
    proxy: LiveServer, admin: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    await _parallel_against_small_balance([proxy.url], admin, clean_db)


@pytest.fixture
def two_processes(
    database_url: str, upstream: FakeUpstream, clean_db: AsyncEngine
) -> Iterator[list[GatewayProcess]]:
    env = {
        "DATABASE_URL": database_url,
        "TOLLGATE_ADMIN_TOKEN": ADMIN_TOKEN,
        "UPSTREAM_BASE_URL": upstream.url,
        "UPSTREAM_API_KEY": "upstream-secret",
        "TOLLGATE_PRICING_DIR": str(FIXTURE_PRICING),
        "TOLLGATE_HOLD_LEASE_SECONDS": "1",
    }
    processes = [GatewayProcess(env).start(), GatewayProcess(env).start()]
    yield processes
    for process in processes:
        process.stop()


async def test_the_same_with_two_gateway_processes(
    two_processes: list[GatewayProcess], admin: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    await _parallel_against_small_balance([p.url for p in two_processes], admin, clean_db)


async def test_killing_a_gateway_loses_no_usage_and_leaves_no_hold(
    two_processes: list[GatewayProcess], admin: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    victim, survivor = two_processes
    account, key = await new_account_with_key(admin, credit="10.00")

    async def stream(url: str, length: int) -> bool:
        """True when the stream ended with `[DONE]` (its usage was committed first)."""
        body = {
            "model": "llama-3.1-8b",
            "messages": HELLO,
            "stream": True,
            "user": f"behaviour:long:{length}",
        }
        data = b""
        try:
            async with (
                httpx.AsyncClient(timeout=30) as client,
                client.stream(
                    "POST",
                    f"{url}/v1/chat/completions",
                    json=body,
                    headers={"Authorization": f"Bearer {key}"},
                ) as response,
            ):
                async for chunk in response.aiter_raw():
                    data += chunk
        except httpx.HTTPError:
            return False
        return b"data: [DONE]" in data

    short = [asyncio.create_task(stream(victim.url, 2)) for _ in range(5)]
    long = [asyncio.create_task(stream(victim.url, 400)) for _ in range(5)]
    assert all(await asyncio.gather(*short))
    await asyncio.sleep(0.5)  # the long streams are mid-flight
    victim.kill()
    finished = await asyncio.gather(*long)
    assert not any(finished)
    # Every stream that saw [DONE] was committed; none of the killed ones was.
    found = await events(clean_db, account["id"])
    assert len(found) == 5
    stranded = await totals(clean_db, account["id"])
    assert stranded.holds == 5  # left by the dead process...
    # ...until their 1 s lease runs out and the surviving instance sweeps them.
    for _ in range(50):
        await asyncio.sleep(0.1)
        after = await totals(clean_db, account["id"])
        if after.holds == 0:
            break
    assert after.held == 0 and after.holds == 0
    assert after.balance == after.ledger == Decimal("10") - sum(e.cost for e in found)
    assert (await stream(survivor.url, 2)) is True


async def test_free_tier_gets_429_on_the_21st_request_until_a_purchase(
    proxy: LiveServer, admin: httpx.AsyncClient
) -> None:
    account, key = await new_account_with_key(admin)
    url = f"/admin/accounts/{account['id']}/credits"
    await admin.post(url, json={"amount": "1.00", "kind": "grant"})  # credit, but still free tier
    async with httpx.AsyncClient(timeout=30) as client:
        for i in range(20):
            response = await _chat(client, proxy.url, key, model="llama-3.1-8b", max_tokens=5)
            assert response.status_code == 200, (i, response.text)
            assert response.headers["x-ratelimit-limit-requests"] == "20"
        assert response.headers["x-ratelimit-remaining-requests"] == "0"
        refused = await _chat(client, proxy.url, key, model="llama-3.1-8b", max_tokens=5)
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        await admin.post(url, json={"amount": "5.00", "kind": "purchase"})  # → standard
        upgraded = await _chat(client, proxy.url, key, model="llama-3.1-8b", max_tokens=5)
        assert upgraded.status_code == 200
        assert upgraded.headers["x-ratelimit-limit-requests"] == "50"


async def test_tpm_reserves_the_estimate_and_refuses_a_request_too_large(
    proxy: LiveServer, admin: httpx.AsyncClient
) -> None:
    _, key = await new_account_with_key(admin, credit="10.00")  # standard: 100,000 TPM
    async with httpx.AsyncClient(timeout=30) as client:
        too_large = await _chat(client, proxy.url, key, model="llama-3.1-8b", max_tokens=100_001)
        assert too_large.status_code == 429
        assert "tokens per minute" in too_large.json()["error"]["message"]
        fine = await _chat(client, proxy.url, key, model="llama-3.1-8b", max_tokens=10)
        assert fine.status_code == 200
        # Corrected to the actual usage: far more than 100,000 − 10 − prompt remains.
        assert int(fine.headers["x-ratelimit-remaining-tokens"]) > 99_000


async def test_redis_holds_two_instances_to_one_limit(
    gateways: Gateways, upstream: FakeUpstream, admin: httpx.AsyncClient, redis_url: str
) -> None:
    settings = {"UPSTREAM_BASE_URL": upstream.url, "REDIS_URL": redis_url}
    first = gateways.get(**settings, INSTANCE="a")
    second = gateways.get(**settings, INSTANCE="b")
    account, key = await new_account_with_key(admin)
    await admin.post(
        f"/admin/accounts/{account['id']}/credits", json={"amount": "1.00", "kind": "grant"}
    )
    async with httpx.AsyncClient(timeout=30) as client:
        responses = [
            await _chat(client, (first, second)[i % 2].url, key, model="llama-3.1-8b", max_tokens=5)
            for i in range(30)
        ]
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 20 and statuses.count(429) == 10, statuses


async def test_redis_reset_headers_follow_the_window(redis_url: str) -> None:
    """The reset times on Redis are learnt from the increment that starts a window (or asked
    once), not asked on every request: they still count down with Redis's own expiry."""
    tier = Tier("test", Decimal(0), rpm=100, tpm=100_000)
    account = uuid.uuid4()
    limiter, other = RateLimiter(redis_url), RateLimiter(redis_url)
    asked = [_count_expiry_questions(limiter), _count_expiry_questions(other)]
    redis = coredis.Redis.from_url(redis_url)
    try:
        first = await limiter.admit(account, tier, 10)
        await asyncio.sleep(1.2)
        second = await limiter.admit(account, tier, 10)
        assert asked[0] == [0]  # two increments, nothing else
        joined = await other.admit(account, tier, 10)  # a window another instance started
        assert asked[1] == [2]
        ttl = await redis.pttl(f"LIMITS:tollgate:rpm:{account}") / 1000  # limits' prefix
        assert first.requests == 1 and joined.requests == 3
        assert first.requests_reset > second.requests_reset + 1
        for state in (second, joined):  # Redis's TTL, as the other asked, is whole seconds
            assert abs(state.requests_reset - ttl) < 1.0
            assert abs(state.tokens_reset - ttl) < 1.0
    finally:
        await redis.delete([f"LIMITS:tollgate:{kind}:{account}" for kind in ("rpm", "tpm")])
        limiter.close()
        other.close()


def _count_expiry_questions(limiter: Any) -> list[int]:
    """How many times `limiter` asks Redis when a window ends (its only caller of TTL)."""
    shared, count = limiter._shared, [0]
    asking = shared.get_expiry

    async def get_expiry(key: str) -> float:
        count[0] += 1
        return float(await asking(key))

    shared.get_expiry = get_expiry
    return count
