"""Holds that bound every request (SPEC 7): the prompt estimate counts every part an upstream
bills as input, the gateway's own output count covers tool calls, and no input breaks the
money. The upstream counts input as OpenAI does (tests/support/openai_count.py)."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import socket
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY
from sqlalchemy.ext.asyncio import AsyncEngine

from app.gateway import tokens
from app.gateway.relay import SseInspector
from app.gateway.usage import delivered_tokens
from tests.conftest import ADMIN_TOKEN, Gateways, new_account_with_key
from tests.gateway.conftest import FIXTURE_PRICING, events, totals
from tests.support import openai_count
from tests.support.live import LiveServer
from tests.support.upstream import TOOL_NAME, FakeUpstream, tool_call_arguments

_HOLD = re.compile(r"may cost up to ([0-9.]+) ")


def _tool(index: int, size: int) -> dict[str, Any]:
    """A function definition of about `size` bytes of JSON."""
    description = ("Looks up an order by its number and returns its state. " * 40)[: size - 150]
    parameters = {"type": "object", "properties": {"order": {"type": "string"}}}
    return {
        "type": "function",
        "function": {"name": f"tool_{index}", "description": description, "parameters": parameters},
    }


def _shortfalls() -> float:
    return REGISTRY.get_sample_value("tollgate_hold_shortfall_total") or 0.0


async def _chat(client: httpx.AsyncClient, key: str, body: dict[str, Any]) -> httpx.Response:
    return await client.post(
        "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
    )


async def test_two_thousand_tools_on_one_cent_are_refused_and_nothing_changes(
    proxy: LiveServer, upstream: FakeUpstream, admin: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    # The reproduction of issue 13: the hold counted only `messages` (~€0.00005), the
    # upstream billed 544,731 prompt tokens, and the account went to −€4.35.
    account, key = await new_account_with_key(admin, credit="0.01")
    body = {
        "model": "deepseek-r1-70b",
        "messages": [{"role": "user", "content": "Which order shipped?"}],
        "max_tokens": 1,
        "tools": [_tool(i, 1024) for i in range(2000)],
        "user": "behaviour:openai-count",
    }
    async with httpx.AsyncClient(base_url=proxy.url, timeout=60) as client:
        response = await _chat(client, key, body)
    assert response.status_code == 402, response.text
    assert response.json()["error"]["code"] == "insufficient_quota"
    held = Decimal(_HOLD.search(response.json()["error"]["message"]).group(1))  # type: ignore[union-attr]
    # ~473,000 tokens as OpenAI counts them: more than the model's 131,072-token context, which
    # is the most an upstream bills (it refuses a longer prompt), so that is what is held.
    assert openai_count.prompt_tokens(body) > 131_072
    assert held >= 131_072 * Decimal("8.00") / 1_000_000 > Decimal("1")
    assert upstream.requests == []
    after = await totals(clean_db, account["id"])
    assert after.balance == Decimal("0.01") and after.held == 0 and after.holds == 0


@pytest.mark.parametrize("stream", [False, True])
async def test_tool_call_output_without_upstream_usage_is_charged_for_its_tokens(
    stream: bool, raw: httpx.AsyncClient, funded: tuple[dict[str, Any], str], clean_db: AsyncEngine
) -> None:
    body = {
        "model": "llama-3.3-70b",
        "messages": [{"role": "user", "content": "Where is order 7?"}],
        "tools": [_tool(0, 400)],
        "stream": stream,
        "user": "behaviour:tool-call:4000,no-usage",
    }
    response = await raw.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    if stream:
        assert response.text.count('"arguments"') > 40  # relayed piece by piece
    else:
        call = response.json()["choices"][0]["message"]["tool_calls"][0]
        assert len(call["function"]["arguments"]) == 4000
    [event] = await events(clean_db, funded[0]["id"])
    assert event.usage_source == "estimated"
    arguments = tokens.count_text(tool_call_arguments(4000))
    assert arguments > 500
    # The arguments and the function's name, counted the way they arrived.
    assert arguments <= event.completion_tokens <= arguments + tokens.count_text(TOOL_NAME) + 2


_OUTPUTS = {
    "content": "four words of content",
    "reasoning_content": "five words of reasoning here",
    "reasoning": "and three more",
    "refusal": "no way",
}


def test_reasoning_and_refusals_count_as_estimated_output_in_json_and_in_deltas() -> None:
    expected = sum(tokens.count_text(text) for text in _OUTPUTS.values())
    document = {"choices": [{"index": 0, "message": {"role": "assistant", **_OUTPUTS}}]}
    assert delivered_tokens(document) == expected
    inspector = SseInspector(client_wants_usage=False)
    for field, text in _OUTPUTS.items():
        for word in re.findall(r"\S+\s*", text):
            chunk = {"choices": [{"index": 0, "delta": {field: word}}]}
            inspector.feed(b"data: " + json.dumps(chunk).encode() + b"\n\n")
    assert inspector.delivered.total() == expected


def _small_wav(seconds: float) -> str:
    return base64.b64encode(openai_count.wav(seconds)).decode()


_text = st.text(min_size=0, max_size=300)
_json_value = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | _text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=12,
)
_arguments = st.builds(json.dumps, st.dictionaries(_text, _json_value, max_size=5))
_tool_call = st.builds(
    lambda i, name, arguments: {
        "id": f"call_{i}",
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    },
    st.integers(0, 99),
    st.from_regex(r"[a-z_]{1,24}", fullmatch=True),
    _arguments,
)
_part = st.one_of(
    st.builds(lambda t: {"type": "text", "text": t}, _text),
    st.just({"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}),
    st.builds(
        lambda s: {"type": "input_audio", "input_audio": {"data": _small_wav(s), "format": "wav"}},
        st.floats(0.1, 3.0),
    ),
)
_message = st.one_of(
    st.builds(lambda t: {"role": "user", "content": t}, _text),
    st.builds(lambda p: {"role": "user", "content": p}, st.lists(_part, min_size=1, max_size=4)),
    st.builds(
        lambda t, n: {"role": "system", "content": t, "name": n},
        _text,
        st.from_regex(r"[a-z]{1,12}", fullmatch=True),
    ),
    st.builds(
        lambda calls, refusal: {
            "role": "assistant",
            "content": None,
            "tool_calls": calls,
            **({"refusal": refusal} if refusal else {}),
        },
        st.lists(_tool_call, min_size=1, max_size=3),
        st.none() | _text,
    ),
    st.builds(
        lambda i, t: {"role": "tool", "tool_call_id": f"call_{i}", "content": t},
        st.integers(0, 99),
        _text,
    ),
)
_function = st.builds(
    lambda name, description, properties: {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {"type": "object", "properties": properties},
        },
    },
    st.from_regex(r"[a-z_]{1,24}", fullmatch=True),
    _text,
    st.dictionaries(st.from_regex(r"[a-z]{1,10}", fullmatch=True), _json_value, max_size=4),
)


@st.composite
def chat_requests(draw: st.DrawFn) -> dict[str, Any]:
    """Chat requests mixing every part an upstream bills as input."""
    body: dict[str, Any] = {
        "model": draw(st.sampled_from(["deepseek-r1-70b", "llama-3.3-70b-online"])),
        "messages": draw(st.lists(_message, min_size=1, max_size=5)),
        "stream": draw(st.booleans()),
    }
    caps = draw(st.sets(st.sampled_from(["max_tokens", "max_completion_tokens"])))
    for cap in caps:
        body[cap] = draw(st.integers(1, 300))
    if draw(st.booleans()):
        body["n"] = draw(st.integers(1, 3))
    if draw(st.booleans()):
        body["tools"] = draw(st.lists(_function, min_size=1, max_size=4))
        body["tool_choice"] = draw(st.sampled_from(["auto", "required", "none"]))
    if draw(st.booleans()):
        schema = {"type": "object", "properties": draw(st.dictionaries(_text, _json_value))}
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "reply", "schema": schema},
        }
    if draw(st.booleans()):
        body["prediction"] = {"type": "content", "content": draw(_text)}
    if draw(st.booleans()):
        body["functions"] = [draw(_function)["function"]]
    return body


async def test_every_hold_covers_its_charge_for_any_mix_of_billed_parts(
    proxy: LiveServer, admin: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    """For each generated request: its hold (read from the 402 of an account with nothing
    available) is at least what the same request is charged once funded, and no shortfall is
    recorded."""
    empty_account, empty_key = await new_account_with_key(admin, "Empty")
    funded_account, funded_key = await new_account_with_key(admin, "Rich", credit="1000.00")
    shortfalls = _shortfalls()
    loop = asyncio.get_running_loop()
    client = httpx.AsyncClient(base_url=proxy.url, timeout=30)
    checked: list[tuple[Decimal, Decimal]] = []

    @settings(
        max_examples=60,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(chat_requests())
    def check(body: dict[str, Any]) -> None:
        body = {**body, "metadata": {"test_behaviour": "openai-count"}}

        async def one() -> None:
            refused = await _chat(client, empty_key, body)
            assert refused.status_code == 402, refused.text
            hold = Decimal(_HOLD.search(refused.json()["error"]["message"]).group(1))  # type: ignore[union-attr]
            before = len(await events(clean_db, funded_account["id"]))
            served = await _chat(client, funded_key, body)
            assert served.status_code == 200, served.text
            after = await events(clean_db, funded_account["id"])
            assert len(after) == before + 1
            cost = after[-1].cost
            assert after[-1].usage_source == "upstream"
            assert cost <= hold, (cost, hold, body)
            checked.append((cost, hold))

        asyncio.run_coroutine_threadsafe(one(), loop).result()

    try:
        await asyncio.to_thread(check)
    finally:
        await client.aclose()
    assert len(checked) == 60
    assert _shortfalls() == shortfalls
    rich = await totals(clean_db, funded_account["id"])
    assert rich.balance == rich.ledger and rich.held == 0 and rich.holds == 0
    empty = await totals(clean_db, empty_account["id"])
    assert empty.balance == 0 and empty.held == 0


async def test_forty_parallel_tool_heavy_requests_on_a_small_balance(
    proxy: LiveServer, admin: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    # Each request's prompt is ~2,500 tokens of tools at €8.00/M (~€0.02 held with its 50
    # output tokens): €0.05 covers two at a time, whatever the interleaving.
    account, key = await new_account_with_key(admin, credit="0.05")
    body = {
        "model": "deepseek-r1-70b",
        "messages": [{"role": "user", "content": "Where is my order?"}],
        "max_tokens": 50,
        "tools": [_tool(i, 1000) for i in range(10)],
        "user": "behaviour:openai-count,slow-first-byte:0.3",
    }
    shortfalls = _shortfalls()
    async with httpx.AsyncClient(base_url=proxy.url, timeout=60) as client:
        responses = await asyncio.gather(*(_chat(client, key, body) for _ in range(40)))
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 402}, statuses
    assert statuses.count(200) >= 2
    found = await events(clean_db, account["id"])
    assert len(found) == statuses.count(200)
    assert all(e.prompt_tokens == openai_count.prompt_tokens(body) for e in found)
    after = await totals(clean_db, account["id"])
    # No request cost more than its hold, so the bound of SPEC 7 is zero: no overdraft.
    assert _shortfalls() == shortfalls
    assert after.balance >= 0
    assert Decimal("0.05") - after.balance == sum(e.cost for e in found)
    assert after.balance == after.ledger and after.held == 0 and after.holds == 0


async def test_a_cost_beyond_its_hold_is_counted_as_a_shortfall(
    raw: httpx.AsyncClient, funded: tuple[dict[str, Any], str], clean_db: AsyncEngine
) -> None:
    # An upstream that bills far more than the request could have cost (a confused upstream,
    # a tokenizer unlike ours): the charge is what the upstream reports, and it shows.
    before = _shortfalls()
    amount_before = (
        REGISTRY.get_sample_value("tollgate_hold_shortfall_amount_total", {"currency": "EUR"})
        or 0.0
    )
    body = {
        "model": "llama-3.3-70b",
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 5,
        "user": "behaviour:usage:1000000:5",
    }
    response = await raw.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    [event] = await events(clean_db, funded[0]["id"])
    assert event.cost == Decimal("0.800004")
    assert _shortfalls() == before + 1
    amount = REGISTRY.get_sample_value("tollgate_hold_shortfall_amount_total", {"currency": "EUR"})
    assert amount is not None and amount - amount_before == pytest.approx(0.79, abs=0.01)


async def test_the_larger_output_cap_is_held(
    raw: httpx.AsyncClient, admin: httpx.AsyncClient
) -> None:
    _, key = await new_account_with_key(admin, "Capped")
    messages = [{"role": "user", "content": "Hi"}]
    held = []
    for caps in (
        {"max_tokens": 1000, "max_completion_tokens": 10},
        {"max_tokens": 10, "max_completion_tokens": 1000},
        {"max_tokens": 1000},
    ):
        response = await raw.post(
            "/v1/chat/completions",
            json={"model": "deepseek-r1-70b", "messages": messages, **caps},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert response.status_code == 402
        held.append(_HOLD.search(response.json()["error"]["message"]).group(1))  # type: ignore[union-attr]
    assert held[0] == held[1] == held[2]


@pytest.mark.parametrize(
    ("endpoint", "extra", "param"),
    [
        ("/v1/chat/completions", {"n": 2**64}, "n"),
        ("/v1/chat/completions", {"max_tokens": 2**64}, "max_tokens"),
        ("/v1/chat/completions", {"max_completion_tokens": 2**64}, "max_completion_tokens"),
        ("/v1/chat/completions", {"n": 129}, "n"),
        ("/v1/chat/completions", {"max_tokens": 2**31}, "max_tokens"),
        ("/v1/chat/completions", {"user": "u" * 257}, "user"),
        ("/v1/chat/completions", {"user": "u" * 3_000_000}, "user"),
        ("/v1/completions", {"max_tokens": 2**64}, "max_tokens"),
        ("/v1/completions", {"best_of": 2**64}, "best_of"),
        ("/v1/embeddings", {"user": "u" * 257}, "user"),
        ("/v1/images/generations", {"n": 2**64}, "n"),
    ],
)
async def test_out_of_range_inputs_are_a_400_naming_the_field_and_change_nothing(
    endpoint: str,
    extra: dict[str, Any],
    param: str,
    raw: httpx.AsyncClient,
    funded: tuple[dict[str, Any], str],
    upstream: FakeUpstream,
    clean_db: AsyncEngine,
) -> None:
    base: dict[str, Any] = {
        "/v1/chat/completions": {
            "model": "llama-3.3-70b",
            "messages": [{"role": "user", "content": "Hi"}],
        },
        "/v1/completions": {"model": "llama-3.3-70b", "prompt": "Hi"},
        "/v1/embeddings": {"model": "test-embed", "input": "Hi"},
        "/v1/images/generations": {"model": "test-image", "prompt": "a cat"},
    }[endpoint]
    before = await totals(clean_db, funded[0]["id"])
    response = await raw.post(endpoint, json={**base, **extra})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["code"] == "invalid_value"
    assert param in error["message"]
    assert upstream.requests == []
    assert await events(clean_db, funded[0]["id"]) == []
    after = await totals(clean_db, funded[0]["id"])
    assert (after.balance, after.held, after.holds) == (before.balance, 0, 0)


async def test_a_user_of_256_characters_is_accepted(raw: httpx.AsyncClient) -> None:
    response = await raw.post(
        "/v1/chat/completions",
        json={
            "model": "llama-3.3-70b",
            "messages": [{"role": "user", "content": "Hi"}],
            "user": "u" * 256,
        },
    )
    assert response.status_code == 200, response.text


async def test_a_client_gone_before_its_body_is_read_gets_no_500_and_holds_nothing(
    proxy: LiveServer,
    funded: tuple[dict[str, Any], str],
    upstream: FakeUpstream,
    clean_db: AsyncEngine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    where = urlsplit(proxy.url)
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\n"
        f"Host: {where.netloc}\r\n"
        f"Authorization: Bearer {funded[1]}\r\n"
        "Content-Type: application/json\r\n"
        "Content-Length: 100000\r\n\r\n"
        '{"model": "llama-3.3-70b", "messages": ['
    ).encode()
    caplog.set_level("DEBUG", logger="app")
    for _ in range(3):
        with socket.create_connection((where.hostname, where.port)) as conn:
            conn.sendall(head)
            await asyncio.sleep(0.2)  # authenticated, now waiting for the rest of the body
    await asyncio.sleep(0.5)
    errors = [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
    assert errors == [], [r.getMessage() for r in errors]
    assert any("before its request body was read" in r.getMessage() for r in caplog.records)
    assert upstream.requests == []
    after = await totals(clean_db, funded[0]["id"])
    assert after.balance == Decimal("10.00") and after.held == 0 and after.holds == 0


@pytest.mark.parametrize("announced", [True, False], ids=["content-length", "chunked"])
async def test_a_body_over_the_limit_is_413_and_nothing_is_held_or_forwarded(
    gateways: Gateways,
    upstream: FakeUpstream,
    clean_db: AsyncEngine,
    announced: bool,
) -> None:
    upstream.reset()
    small = gateways.get(
        UPSTREAM_BASE_URL=upstream.url,
        TOLLGATE_PRICING_DIR=FIXTURE_PRICING,
        TOLLGATE_MAX_REQUEST_BYTES="2048",
    )
    async with httpx.AsyncClient(base_url=small.url, timeout=30) as admin:
        admin.headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
        account, key = await new_account_with_key(admin, credit="10.00")
    body = json.dumps(
        {"model": "llama-3.3-70b", "messages": [{"role": "user", "content": "x" * 4096}]}
    ).encode()

    async def chunks() -> AsyncIterator[bytes]:  # no content-length: sent chunked
        for start in range(0, len(body), 1000):
            yield body[start : start + 1000]

    async with httpx.AsyncClient(base_url=small.url, timeout=30) as client:
        response = await client.post(
            "/v1/chat/completions",
            content=body if announced else chunks(),
            headers={"Authorization": f"Bearer {key}", "content-type": "application/json"},
        )
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "request_too_large"
    assert upstream.requests == []
    after = await totals(clean_db, account["id"])
    assert (after.balance, after.held, after.holds) == (Decimal("10.00"), 0, 0)
    assert await events(clean_db, account["id"]) == []


def _wav_of(seconds: int, rate: int) -> bytes:
    """`seconds` of silent 8-bit mono WAV at `rate` samples a second: `rate` bytes a second."""
    import io
    import wave

    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(1)
        out.setframerate(rate)
        out.writeframes(b"\x80" * rate * seconds)
    return buffer.getvalue()


async def _transcribe(
    raw: httpx.AsyncClient, data: bytes, name: str, response_format: str, behaviour: str = ""
) -> httpx.Response:
    form = {"model": "test-whisper", "response_format": response_format}
    if behaviour:
        form["user"] = f"behaviour:{behaviour}"
    return await raw.post(
        "/v1/audio/transcriptions", data=form, files={"file": (name, data, "audio/wav")}
    )


async def test_a_transcription_without_reported_length_is_charged_its_measured_duration(
    raw: httpx.AsyncClient, funded: tuple[dict[str, Any], str], clean_db: AsyncEngine
) -> None:
    # Ten minutes at 1 kB a second: its size alone (600 kB) would say 38 s.
    response = await _transcribe(raw, _wav_of(600, 1000), "long.wav", "text")
    assert response.status_code == 200, response.text
    [event] = await events(clean_db, funded[0]["id"])
    assert event.usage_source == "estimated"
    assert event.audio_seconds == 600
    assert event.cost == Decimal("0.06")


async def test_a_verbose_json_duration_is_charged_as_the_upstream_reports_it(
    raw: httpx.AsyncClient, funded: tuple[dict[str, Any], str], clean_db: AsyncEngine
) -> None:
    response = await _transcribe(raw, _wav_of(3, 8000), "short.wav", "verbose_json", "no-usage")
    assert response.status_code == 200, response.text
    assert "usage" not in response.json()
    [event] = await events(clean_db, funded[0]["id"])
    assert event.usage_source == "upstream"
    assert event.audio_seconds == response.json()["duration"]


async def test_an_unreadable_upload_is_held_at_the_lowest_bitrate_and_charged_by_size(
    raw: httpx.AsyncClient, admin: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    # 64 kB that no container reader knows: held as 64 s (1 kB/s), charged as 4 s (16 kB/s).
    account, key = await new_account_with_key(admin, "Tight", credit="0.0063")
    form = {"model": "test-whisper", "response_format": "text"}
    files = {"file": ("clip.webm", b"\x1a" * 64_000, "audio/webm")}
    headers = {"Authorization": f"Bearer {key}"}
    response = await raw.post("/v1/audio/transcriptions", data=form, files=files, headers=headers)
    assert response.status_code == 402, response.text
    assert "0.0064 " in response.json()["error"]["message"]
    await admin.post(
        f"/admin/accounts/{account['id']}/credits", json={"amount": "0.0001", "kind": "grant"}
    )
    response = await raw.post("/v1/audio/transcriptions", data=form, files=files, headers=headers)
    assert response.status_code == 200, response.text
    [event] = await events(clean_db, account["id"])
    assert (event.audio_seconds, event.usage_source) == (4, "estimated")


@pytest.mark.parametrize("depth", [997, 5000])
async def test_json_nested_deeper_than_a_parser_goes_is_a_400(
    depth: int, raw: httpx.AsyncClient, admin: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    # 5,000 levels fail msgspec's decoder; 997 (its most, called from the top of a stack) pass
    # it, or not, but never the re-encoding that counts a tool's tokens. Both were 500s.
    nested = "[" * depth + "]" * depth
    chat = (
        '{"model": "llama-3.3-70b", "messages": [{"role": "user", "content": "Hi"}], "tools": '
        + nested
        + "}"
    )
    usage = '{"start_time": "2025-01-01T00:00:00Z", "group_by": ' + nested + "}"
    events = '{"events": [' + nested + "]}"
    for client, path, body in (
        (raw, "/v1/chat/completions", chat),
        (raw, "/v1/usage/completions", usage),
        (admin, "/admin/events", events),
    ):
        response = await client.post(
            path, content=body.encode(), headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 400, (path, response.text)
        assert response.json()["error"]["code"] in (
            "invalid_json",
            "invalid_events",
            "invalid_type",
        )
    assert upstream.requests == []


def _mp3(frames: int, *, xing_frames: int | None = None) -> bytes:
    """MPEG-1 Layer III frames (128 kbit/s, 44.1 kHz, silent), the first one optionally a
    Xing header claiming `xing_frames`: the header is the client's to write."""
    import struct

    def frame(payload: bytes = b"") -> bytes:
        return bytes([0xFF, 0xFB, 0x90, 0x64]) + payload.ljust(413, b"\0")

    head = []
    if xing_frames is not None:
        head = [frame(b"\0" * 32 + b"Xing" + struct.pack(">II", 1, xing_frames))]
    return b"".join(head + [frame() for _ in range(frames)])


async def test_an_upload_whose_header_understates_its_length_is_held_and_charged_by_size(
    raw: httpx.AsyncClient, admin: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    # 2,400 frames (62.7 s, 1 MB) behind a Xing header that says one frame (0.026 s).
    lying = _mp3(2400, xing_frames=1)
    account, key = await new_account_with_key(admin, "Liar", credit="0.05")
    form = {"model": "test-whisper", "response_format": "text"}
    files = {"file": ("talk.mp3", lying, "audio/mpeg")}
    headers = {"Authorization": f"Bearer {key}"}
    response = await raw.post("/v1/audio/transcriptions", data=form, files=files, headers=headers)
    # Held as the most 1 MB can hold at 8 kbit/s (1,002 s, €0.1002), not as 1 s.
    assert response.status_code == 402, response.text
    assert "0.1002 " in response.json()["error"]["message"]
    await admin.post(
        f"/admin/accounts/{account['id']}/credits", json={"amount": "0.06", "kind": "grant"}
    )
    response = await raw.post("/v1/audio/transcriptions", data=form, files=files, headers=headers)
    assert response.status_code == 200, response.text
    [event] = await events(clean_db, account["id"])
    # Charged by size (16 kB/s: 63 s), not the header's second.
    assert (event.audio_seconds, event.usage_source) == (63, "estimated")
    honest = _mp3(2400)
    response = await raw.post(
        "/v1/audio/transcriptions",
        data=form,
        files={"file": ("talk.mp3", honest, "audio/mpeg")},
        headers=headers,
    )
    assert response.status_code == 200, response.text
    assert (await events(clean_db, account["id"]))[-1].audio_seconds == 63  # 62.55 s measured


async def test_a_part_that_only_references_its_content_holds_the_models_context(
    raw: httpx.AsyncClient, admin: httpx.AsyncClient
) -> None:
    # A file by id: the upstream bills the whole file, which the gateway cannot count.
    _, key = await new_account_with_key(admin, "Files", credit="0.05")
    file_part = {"type": "file", "file": {"file_id": "file-abc123"}}
    body = {
        "model": "llama-3.3-70b",
        "max_tokens": 10,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Sum up"}, file_part]}],
    }
    headers = {"Authorization": f"Bearer {key}"}
    response = await raw.post("/v1/chat/completions", json=body, headers=headers)
    assert response.status_code == 402, response.text
    held = Decimal(_HOLD.search(response.json()["error"]["message"]).group(1))  # type: ignore[union-attr]
    assert held >= 131_072 * Decimal("0.80") / 1_000_000
    body["messages"][0]["content"] = [{"type": "text", "text": "Sum up"}]
    response = await raw.post("/v1/chat/completions", json=body, headers=headers)
    assert response.status_code == 200, response.text


async def test_an_estimated_charge_prices_images_by_their_fee_not_the_holds_allowance(
    raw: httpx.AsyncClient, funded: tuple[dict[str, Any], str], clean_db: AsyncEngine
) -> None:
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this picture?"},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
            ],
        }
    ]
    body = {"model": "pixtral-12b-2409", "messages": messages, "user": "behaviour:no-usage"}
    response = await raw.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    [event] = await events(clean_db, funded[0]["id"])
    assert event.usage_source == "estimated" and event.images == 1
    assert event.prompt_tokens == tokens.count_chat(body, messages).tokens  # no 4,161 more


def test_long_roles_are_not_kept_by_the_count_cache() -> None:
    # A client's 100 kB roles, ten different ones: none stays in memory.
    before = tokens._count_cached.cache_info().currsize
    for i in range(10):
        tokens.count_chat({}, [{"role": f"{i}" + "r" * 100_000, "content": "hi"}])
    assert tokens._count_cached.cache_info().currsize <= before + 1


@pytest.mark.parametrize("depth", [960, 980, 990, 996])
async def test_a_large_body_nested_deep_is_a_400_on_any_path(
    depth: int, raw: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    # Over 256 kB, so inspected in a thread (a shallow stack), then re-encoded for the upstream
    # on the event loop (a deep one): that re-encoding was a 500.
    body = (
        '{"model": "llama-3.3-70b", "stream": true, "max_tokens": 10, "messages": [{"role":'
        + ' "user", "content": "Hi"}], "metadata": {"pad": "'
        + "x" * 300_000
        + '"}, "tools": '
        + "[" * depth
        + "]" * depth
        + "}"
    )
    response = await raw.post(
        "/v1/chat/completions", content=body.encode(), headers={"Content-Type": "application/json"}
    )
    assert response.status_code in (200, 400), response.text  # never a 500
    if response.status_code == 400:
        assert response.json()["error"]["code"] == "invalid_json"
