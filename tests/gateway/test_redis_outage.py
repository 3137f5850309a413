"""Redis goes away mid-traffic: requests keep being served and metered on the process's own
limits, and the shared limits resume when it returns. Each test starts its own redis-server
on a free port (never the machine's), so it can kill and restart it."""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from typing import Any

import coredis
import httpx
import openai
import pytest
from prometheus_client import REGISTRY
from sqlalchemy.ext.asyncio import AsyncEngine

from app.credits.tiers import Tier
from app.errors import RateLimitExceeded
from app.limits.service import RateLimiter
from tests.conftest import Gateways, new_account_with_key
from tests.gateway.conftest import FIXTURE_PRICING, events, totals
from tests.support.live import LiveServer
from tests.support.process import free_port
from tests.support.upstream import FakeUpstream

HELLO = [{"role": "user", "content": "Say this is a test!"}]
TIER = Tier("test", Decimal(0), rpm=1_000, tpm=5_000_000)
REDIS_SERVER = shutil.which("redis-server")


class RedisServer:
    """A throwaway redis-server on its own port, killed and restarted by the test."""

    def __init__(self) -> None:
        assert REDIS_SERVER is not None
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        assert REDIS_SERVER is not None
        self.process = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    async def get(self, key: str) -> int | None:
        """A limiter's count as Redis holds it (`limits` prefixes its keys with LIMITS:)."""
        client = coredis.Redis(port=self.port, decode_responses=True)
        try:
            value = await client.get(f"LIMITS:{key}")
        finally:
            client.connection_pool.disconnect()
        return None if value is None else int(value)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed")
    server = RedisServer().start()
    yield server
    server.kill()


def fallback_gauge() -> float:
    return REGISTRY.get_sample_value("tollgate_rate_limit_fallback") or 0.0


def fallbacks() -> float:
    return REGISTRY.get_sample_value("tollgate_rate_limit_fallbacks_total") or 0.0


async def _until(condition: Any, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not await condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_the_limiter_falls_back_once_and_resumes(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="app.limits.service")
    limiter = RateLimiter(redis_server.url, retry_seconds=0.2)
    try:
        account = uuid.uuid4()
        gauge, count = fallback_gauge(), fallbacks()
        await limiter.admit(account, TIER, 100)
        await limiter.correct(account, 100, 40)
        assert await redis_server.get(f"tollgate:rpm:{account}") == 1
        assert await redis_server.get(f"tollgate:tpm:{account}") == 40
        redis_server.kill()

        states = await asyncio.gather(*(limiter.admit(account, TIER, 100) for _ in range(20)))
        assert not limiter.shared
        assert sorted(state.requests for state in states) == list(range(1, 21))  # own counters
        assert fallback_gauge() == gauge + 1 and fallbacks() == count + 1
        # A reservation made in Redis, corrected after the fallback: no exception, and it
        # lands on the process's count (lenient by that much, as documented).
        await limiter.correct(account, 100, 40)
        assert (await limiter.peek(account, TIER)).tokens == 20 * 100 - 60
        ours = [r for r in caplog.records if r.name == "app.limits.service"]
        warnings = [r for r in ours if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and f"127.0.0.1:{redis_server.port}" in warnings[0].getMessage()

        redis_server.start()  # the same port, empty (no persistence)

        async def shared_again() -> bool:
            await limiter.admit(account, TIER, 1)
            return limiter.shared

        await _until(shared_again, 5)
        assert fallback_gauge() == gauge and fallbacks() == count + 1
        before = await redis_server.get(f"tollgate:rpm:{account}") or 0
        await limiter.admit(account, TIER, 1)
        assert await redis_server.get(f"tollgate:rpm:{account}") == before + 1  # Redis again
        ours = [r for r in caplog.records if r.name == "app.limits.service"]
        assert [r.levelno for r in ours] == [logging.WARNING, logging.INFO]
        assert "answers again" in ours[1].getMessage()
    finally:
        limiter.close()


async def test_a_redis_that_never_answers_costs_one_short_deadline() -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()  # accepts connections, never replies
    limiter = RateLimiter(f"redis://127.0.0.1:{silent.getsockname()[1]}/0", timeout=0.2)
    gauge = fallback_gauge()
    try:
        account = uuid.uuid4()
        started = time.monotonic()
        await limiter.admit(account, TIER, 10)
        assert time.monotonic() - started < 0.6
        assert not limiter.shared and fallback_gauge() == gauge + 1
        started = time.monotonic()
        for _ in range(50):
            await limiter.admit(account, TIER, 10)
        await limiter.correct(account, 10, 5)
        assert (await limiter.peek(account, TIER)).requests == 51
        assert time.monotonic() - started < 0.2  # in process from then on: no waiting
    finally:
        limiter.close()
        silent.close()
    assert fallback_gauge() == gauge


async def test_redis_unreachable_from_the_start_still_limits() -> None:
    limiter = RateLimiter(f"redis://127.0.0.1:{free_port()}/0")
    account = uuid.uuid4()
    tier = Tier("tiny", Decimal(0), rpm=3, tpm=1_000)
    try:
        for _ in range(3):
            await limiter.admit(account, tier, 1)
        with pytest.raises(RateLimitExceeded):  # the limit, never Redis's absence
            await limiter.admit(account, tier, 1)
        assert not limiter.shared
    finally:
        limiter.close()


@pytest.fixture
def on_redis(
    gateways: Gateways, upstream: FakeUpstream, clean_db: AsyncEngine, redis_server: RedisServer
) -> LiveServer:
    upstream.reset()
    return gateways.get(
        UPSTREAM_BASE_URL=upstream.url,
        TOLLGATE_PRICING_DIR=FIXTURE_PRICING,
        REDIS_URL=redis_server.url,
    )


@pytest.fixture
async def enterprise(admin: httpx.AsyncClient) -> tuple[dict[str, Any], str]:
    """1,000 RPM: the traffic below never meets a limit, whichever counters are used."""
    return await new_account_with_key(admin, credit="1000.00")


@pytest.fixture
async def sdk(
    on_redis: LiveServer, enterprise: tuple[dict[str, Any], str]
) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(
        base_url=f"{on_redis.url}/v1", api_key=enterprise[1], max_retries=0, timeout=30
    )
    yield client
    await client.close()


async def test_redis_stopped_mid_traffic_fails_no_request_and_meters_every_one(
    sdk: openai.AsyncOpenAI,
    enterprise: tuple[dict[str, Any], str],
    redis_server: RedisServer,
    clean_db: AsyncEngine,
) -> None:
    account_id = enterprise[0]["id"]
    rpm_key = f"tollgate:rpm:{account_id}"
    assert fallback_gauge() == 0
    sent = done = 0
    failures: list[BaseException] = []
    gauge_seen: list[float] = []
    stop = asyncio.Event()

    async def one(stream: bool) -> None:
        # A little upstream latency keeps requests in flight when Redis is killed.
        body: dict[str, Any] = {
            "model": "llama-3.1-8b",
            "messages": HELLO,
            "max_tokens": 20,
            "user": "behaviour:slow-first-byte:0.02",
        }
        if stream:
            chunks = await sdk.chat.completions.create(
                **body, stream=True, stream_options={"include_usage": True}
            )
            last = [chunk async for chunk in chunks][-1]
            assert last.usage is not None
        else:
            reply = await sdk.chat.completions.create(**body)
            assert reply.usage is not None

    async def worker(index: int) -> None:
        nonlocal sent, done
        while not stop.is_set():
            sent += 1
            try:
                await one(stream=(sent + index) % 2 == 0)
            except Exception as exc:  # every failure is the test's finding
                failures.append(exc)
            done += 1

    async def finished(target: int) -> bool:
        return done >= target

    async def watch_gauge() -> None:
        while not stop.is_set():
            value = fallback_gauge()
            if not gauge_seen or gauge_seen[-1] != value:
                gauge_seen.append(value)
            await asyncio.sleep(0.01)

    async def redis_count_at_least(target: int) -> bool:
        return (await redis_server.get(rpm_key) or 0) >= target

    async def falling_back() -> bool:
        return fallback_gauge() == 1

    workers = [asyncio.create_task(worker(i)) for i in range(8)]
    watcher = asyncio.create_task(watch_gauge())
    try:
        await _until(lambda: finished(40))
        assert await redis_count_at_least(1)  # the shared limits are in use
        redis_server.kill()  # mid-traffic: SIGKILL, with requests in flight
        after_kill = sent + 60
        await _until(lambda: finished(after_kill))
        await _until(falling_back)

        redis_server.start()  # the same port, empty

        async def counted_in_redis() -> bool:
            return fallback_gauge() == 0 and await redis_count_at_least(1)

        await _until(counted_in_redis)
        # The shared counter moves on with the traffic.
        resumed = await redis_server.get(rpm_key) or 0
        await _until(lambda: redis_count_at_least(resumed + 20))
    finally:
        stop.set()
        await asyncio.gather(*workers)
        await watcher

    assert failures == []
    # [0, 1, 0]; on a starved machine a healthy Redis can miss the deadline too, and the
    # limiter then falls back (and returns) once more: still served, still exact.
    assert gauge_seen[0] == 0 and 1 in gauge_seen and gauge_seen[-1] == 0, gauge_seen
    found = await events(clean_db, account_id)
    assert len(found) == sent
    after = await totals(clean_db, account_id)
    cost = sum((event.cost for event in found), Decimal(0))
    assert cost > 0
    assert Decimal("1000") - after.balance == cost == after.total_usage
    assert after.balance == after.ledger
    assert after.held == 0 and after.holds == 0
