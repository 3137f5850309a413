"""Route lists and the circuit breaker (SPEC 13) against real upstreams on loopback: a refused
port, an upstream answering 503, and good ones; the official SDK as the client."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from app.gateway.upstreams import (
    Attempt,
    BreakerPolicy,
    CircuitBreaker,
    Upstream,
    UpstreamConfigError,
    load_routing,
)
from tests.conftest import Gateways, make_settings, new_account_with_key
from tests.gateway.conftest import FIXTURE_PRICING, events, totals
from tests.support.live import LiveServer
from tests.support.upstream import FakeUpstream

HELLO = [{"role": "user", "content": "Say this is a test!"}]
MODEL = "llama-3.1-8b"


@pytest.fixture(scope="module")
def backup() -> Iterator[FakeUpstream]:
    fake = FakeUpstream().start()
    yield fake
    fake.stop()


@pytest.fixture
def failing(backup: FakeUpstream) -> FakeUpstream:
    """The module's second upstream, answering 503 to everything until a test says otherwise."""
    backup.reset()
    backup.forced = "error-503"
    return backup


def refused_url() -> str:
    """A loopback port nobody listens on: connecting to it is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def upstreams_file(tmp_path: Path, urls: dict[str, str], route: list[str], extra: str = "") -> Path:
    lines = [
        f'[upstreams.{name}]\nbase_url = "{url}"\napi_key = "key-{name}"\n'
        for name, url in urls.items()
    ]
    entries = ", ".join(f'"{name}"' for name in route)
    lines.append(f'[routes]\n"{MODEL}" = [{entries}]\n')
    path = tmp_path / "upstreams.toml"
    path.write_text("\n".join(lines) + extra)
    return path


def start(gateways: Gateways, path: Path) -> LiveServer:
    return gateways.get(TOLLGATE_UPSTREAMS_FILE=path, TOLLGATE_PRICING_DIR=FIXTURE_PRICING)


async def chat(server: LiveServer, key: str, *, stream: bool) -> str:
    """One completion through the SDK, checked to have been answered; its request id."""
    sdk = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)
    if stream:
        raw = await sdk.chat.completions.with_raw_response.create(
            model=MODEL, messages=HELLO, stream=True
        )
        chunks = [chunk async for chunk in raw.parse()]
        assert any(c.choices and c.choices[0].delta.content for c in chunks)
        return raw.headers["x-request-id"]
    response = await sdk.chat.completions.with_raw_response.create(model=MODEL, messages=HELLO)
    assert response.parse().choices[0].message.content
    return response.headers["x-request-id"]


async def generation(server: LiveServer, key: str, request_id: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        response = await client.get(
            f"/v1/generations/{request_id}", headers={"Authorization": f"Bearer {key}"}
        )
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


async def charged_once_each(engine: AsyncEngine, account_id: str, requests: int) -> None:
    """One usage event per request, and the ledger holding exactly their cost."""
    found = await events(engine, account_id)
    assert len(found) == requests
    after = await totals(engine, account_id)
    assert after.held == 0 and after.holds == 0
    assert after.total_usage == sum(Decimal(e.cost) for e in found)
    assert after.ledger == after.balance


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("first", ["refused", "503"])
async def test_the_next_upstream_serves_when_the_first_fails_before_answering(
    gateways: Gateways,
    upstream: FakeUpstream,
    failing: FakeUpstream,
    admin: httpx.AsyncClient,
    clean_db: AsyncEngine,
    tmp_path: Path,
    first: str,
    stream: bool,
) -> None:
    upstream.reset()
    bad = refused_url() if first == "refused" else failing.url
    server = start(
        gateways, upstreams_file(tmp_path, {"bad": bad, "good": upstream.url}, ["bad", "good"])
    )
    account, key = await new_account_with_key(admin, credit="10.00")
    request_id = await chat(server, key, stream=stream)
    found = await generation(server, key, request_id)
    assert found["upstream"] == "good"
    # Each request reached the good upstream once, as its model and with its credentials.
    served = [r for r in upstream.requests if r.path == "/v1/chat/completions"]
    assert served and all(r.headers["authorization"] == "Bearer key-good" for r in served)
    if first == "503":
        assert len(failing.requests) == len(served)
        assert failing.requests[0].headers["authorization"] == "Bearer key-bad"
    await charged_once_each(clean_db, account["id"], len(served))


async def test_when_every_upstream_fails_the_last_failure_is_returned_and_nothing_is_charged(
    gateways: Gateways,
    failing: FakeUpstream,
    admin: httpx.AsyncClient,
    clean_db: AsyncEngine,
    tmp_path: Path,
) -> None:
    account, key = await new_account_with_key(admin, credit="10.00")
    before = await totals(clean_db, account["id"])
    # [refused, 503]: the 503's body passes through as the upstream sent it.
    path = upstreams_file(tmp_path, {"a": refused_url(), "b": failing.url}, ["a", "b"])
    sdk = openai.AsyncOpenAI(base_url=f"{start(gateways, path).url}/v1", api_key=key, max_retries=0)
    with pytest.raises(openai.InternalServerError) as raised:
        await sdk.chat.completions.create(model=MODEL, messages=HELLO)
    assert raised.value.status_code == 503
    # [503, refused]: the refused connection is the last failure, SPEC 3's 502.
    other = tmp_path / "other"
    other.mkdir()
    path = upstreams_file(other, {"a": failing.url, "b": refused_url()}, ["a", "b"])
    sdk = openai.AsyncOpenAI(base_url=f"{start(gateways, path).url}/v1", api_key=key, max_retries=0)
    with pytest.raises(openai.APIStatusError) as raised:
        await sdk.chat.completions.create(model=MODEL, messages=HELLO, stream=True)
    assert raised.value.status_code == 502
    assert raised.value.code == "upstream_unavailable"
    after = await totals(clean_db, account["id"])
    assert (after.balance, after.held, after.holds) == (before.balance, 0, 0)
    assert await events(clean_db, account["id"]) == []


async def test_a_client_error_is_not_retried(
    gateways: Gateways,
    upstream: FakeUpstream,
    failing: FakeUpstream,
    admin: httpx.AsyncClient,
    tmp_path: Path,
) -> None:
    failing.forced = ""  # a healthy first upstream that finds the request itself invalid
    upstream.reset()
    path = upstreams_file(
        tmp_path, {"first": failing.url, "second": upstream.url}, ["first", "second"]
    )
    _, key = await new_account_with_key(admin, credit="10.00")
    sdk = openai.AsyncOpenAI(base_url=f"{start(gateways, path).url}/v1", api_key=key, max_retries=0)
    with pytest.raises(openai.BadRequestError):
        await sdk.chat.completions.create(model=MODEL, messages=HELLO, user="behaviour:error-400")
    assert len(failing.requests) == 1
    assert upstream.requests == []


async def test_an_upstream_that_fails_after_the_first_byte_is_not_retried(
    gateways: Gateways,
    upstream: FakeUpstream,
    failing: FakeUpstream,
    admin: httpx.AsyncClient,
    clean_db: AsyncEngine,
    tmp_path: Path,
) -> None:
    failing.forced = "break-midway"
    upstream.reset()
    path = upstreams_file(
        tmp_path, {"first": failing.url, "second": upstream.url}, ["first", "second"]
    )
    account, key = await new_account_with_key(admin, credit="10.00")
    sdk = openai.AsyncOpenAI(base_url=f"{start(gateways, path).url}/v1", api_key=key, max_retries=0)
    received = []
    with pytest.raises(openai.APIError) as raised:
        async with await sdk.chat.completions.create(
            model=MODEL, messages=HELLO, stream=True
        ) as chunks:
            async for chunk in chunks:
                received.append(chunk)
    assert received, "the stream had begun"
    assert "broke mid-stream" in str(raised.value)
    assert upstream.requests == []
    # What was delivered is charged (estimated), once.
    await charged_once_each(clean_db, account["id"], 1)
    assert (await events(clean_db, account["id"]))[0].upstream == "first"


async def test_the_breaker_skips_a_dead_upstream_and_returns_to_it_once_it_answers(
    gateways: Gateways,
    upstream: FakeUpstream,
    failing: FakeUpstream,
    admin: httpx.AsyncClient,
    tmp_path: Path,
) -> None:
    upstream.reset()
    # A cool-down long enough that a loaded machine's few requests all fall inside it.
    cooldown = 3.0
    breaker = f"\n[breaker]\nwindow = 4\nmin_attempts = 3\ncooldown_seconds = {cooldown}\n"
    path = upstreams_file(
        tmp_path, {"flaky": failing.url, "good": upstream.url}, ["flaky", "good"], breaker
    )
    server = start(gateways, path)
    _, key = await new_account_with_key(admin, credit="10.00")
    clock = asyncio.get_running_loop().time
    for _ in range(3):
        await chat(server, key, stream=False)
    opened = clock()
    assert len(failing.requests) == 3  # three failures of three: the circuit opens
    for _ in range(5):
        await chat(server, key, stream=False)
    assert len(failing.requests) == 3, "skipped while open"
    await asyncio.sleep(opened + cooldown + 0.1 - clock())
    await chat(server, key, stream=False)  # the probe, which fails: open again
    opened = clock()
    assert len(failing.requests) == 4
    await chat(server, key, stream=False)
    assert len(failing.requests) == 4
    failing.forced = ""  # it recovers
    await asyncio.sleep(opened + cooldown + 0.1 - clock())
    request_id = await chat(server, key, stream=False)  # the probe succeeds: closed
    assert (await generation(server, key, request_id))["upstream"] == "flaky"
    before = len(upstream.requests)
    for _ in range(3):
        await chat(server, key, stream=False)
    assert len(failing.requests) == 8 and len(upstream.requests) == before


def test_the_breaker_opens_on_most_recent_failures_and_lets_one_probe_through() -> None:
    now = [0.0]
    breaker = CircuitBreaker(
        BreakerPolicy(window=4, min_attempts=4, cooldown_seconds=10), lambda: now[0]
    )
    a, b = (Attempt(Upstream(n, f"http://{n}/v1", None), "m") for n in "ab")
    for outcome in (True, False, True):  # two of three: too few attempts to judge
        breaker.failed("a") if outcome else breaker.succeeded("a")
    assert breaker.order([a, b]) == [a, b]
    breaker.succeeded("a")  # 2 of 4 failed: not most
    assert breaker.order([a, b]) == [a, b]
    breaker.failed("a")  # the window slides: still 2 of the last 4
    assert not breaker.is_open("a")
    breaker.failed("a")  # 3 of the last 4
    assert breaker.is_open("a") and breaker.order([a, b]) == [b]
    assert breaker.order([a]) == [a], "never refused without trying one"
    now[0] = 10.0
    assert breaker.order([a, b]) == [a, b]  # the probe
    assert breaker.order([a, b]) == [b], "one probe at a time"
    breaker.succeeded("a")
    assert not breaker.is_open("a") and breaker.order([a, b]) == [a, b]


def test_route_lists_in_the_upstreams_file(tmp_path: Path) -> None:
    path = tmp_path / "u.toml"

    def load(text: str) -> Any:
        path.write_text(text)
        return load_routing(make_settings("postgresql://unused", TOLLGATE_UPSTREAMS_FILE=path))

    ups = '[upstreams.a]\nbase_url = "http://a/v1"\n[upstreams.b]\nbase_url = "http://b/v1/"\n'
    router, policy = load(
        'default = ["a", "b"]\n'
        + ups
        + '[routes]\n"Llama-3.3-70b" = ["b", { upstream = "a", model = "l33" }]\n'
    )
    assert policy == BreakerPolicy()
    assert [(x.upstream.name, x.model) for x in router.route("x", "x", None, "X")] == [
        ("a", "X"),
        ("b", "X"),
    ]
    attempts = router.route(
        "llama-3.3-70b-online", "llama-3.3-70b", "-online", "Llama-3.3-70B-online"
    )
    assert [(x.upstream.name, x.upstream.base_url, x.model) for x in attempts] == [
        ("b", "http://b/v1", "Llama-3.3-70B-online"),
        ("a", "http://a/v1", "l33-online"),
    ]
    assert router.upstreams == ["a", "b"]
    for bad, message in (
        ('default = ["a", "a"]\n' + ups, "listed twice"),
        ("default = []\n" + ups, "empty list"),
        ('default = ["a", "c"]\n' + ups, "unknown upstream 'c'"),
        (ups + '[routes]\n"m" = [{ upstream = "a", model = 3 }]\n', "model: expected a string"),
        (ups + "[breaker]\nwindow = 0\n", "positive number"),
        (ups + "[breaker]\nwindow = 2\nmin_attempts = 3\n", "more than the window"),
        (ups + "[breaker]\nwindw = 2\n", "unknown keys"),
    ):
        with pytest.raises(UpstreamConfigError, match=message):
            load(bad)
