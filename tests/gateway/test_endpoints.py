"""Embeddings, images, audio and legacy completions through the gateway, priced from the test
fixture tables (the seeds price none of these models)."""

from __future__ import annotations

import io
from typing import Any

import httpx
import openai
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.gateway.conftest import events
from tests.support.live import LiveServer
from tests.support.upstream import FakeUpstream


async def test_legacy_completions(
    sdk: openai.AsyncOpenAI, funded: tuple[dict[str, Any], str], clean_db: AsyncEngine
) -> None:
    reply = await sdk.completions.create(model="llama-3.1-8b", prompt="Write a poem", max_tokens=20)
    assert reply.choices[0].text
    stream = await sdk.completions.create(
        model="llama-3.1-8b", prompt="Write a poem", max_tokens=20, stream=True
    )
    [chunk async for chunk in stream]
    plain, streamed = await events(clean_db, funded[0]["id"])
    assert plain.endpoint == "/v1/completions"
    assert plain.cost == streamed.cost > 0


async def test_embeddings(
    sdk: openai.AsyncOpenAI, funded: tuple[dict[str, Any], str], clean_db: AsyncEngine
) -> None:
    result = await sdk.embeddings.create(model="test-embed", input=["hello", "world"])
    assert len(result.data) == 2
    tokens = await sdk.embeddings.create(model="test-embed", input=[[1, 2, 3, 4]])
    assert tokens.usage.prompt_tokens == 4
    first, _ = await events(clean_db, funded[0]["id"])
    assert first.endpoint == "/v1/embeddings"
    assert first.prompt_tokens == result.usage.prompt_tokens
    assert first.completion_tokens == 0 and first.cost > 0


async def test_image_generation(
    sdk: openai.AsyncOpenAI, funded: tuple[dict[str, Any], str], clean_db: AsyncEngine
) -> None:
    result = await sdk.images.generate(model="test-image", prompt="a cat", n=2, size="1024x1024")
    assert len(result.data) == 2
    [event] = await events(clean_db, funded[0]["id"])
    assert event.images == 2
    assert event.cost > 0


async def test_audio_transcription_and_speech(
    sdk: openai.AsyncOpenAI, funded: tuple[dict[str, Any], str], clean_db: AsyncEngine
) -> None:
    audio = io.BytesIO(b"\x00" * 64_000)
    audio.name = "speech.mp3"
    transcript = await sdk.audio.transcriptions.create(model="test-whisper", file=audio)
    assert transcript.text
    speech = await sdk.audio.speech.create(model="test-tts", input="Hello there", voice="alloy")
    assert len(speech.content) > 0
    heard, spoken = await events(clean_db, funded[0]["id"])
    assert heard.endpoint == "/v1/audio/transcriptions" and heard.audio_seconds > 0
    assert heard.cost > 0
    assert spoken.endpoint == "/v1/audio/speech" and spoken.cost > 0


async def test_models_list_and_retrieve(raw: httpx.AsyncClient) -> None:
    listing = (await raw.get("/v1/models")).json()
    ids = {model["id"] for model in listing["data"]}
    assert {"llama-3.3-70b", "llama-3.3-70b-online", "llama-3.3-70b-deep"} <= ids
    one = await raw.get("/v1/models/llama-3-3-70b")
    assert one.status_code == 200 and one.json()["id"] == "llama-3.3-70b"
    assert (await raw.get("/v1/models/nope")).json()["error"]["code"] == "model_not_found"


async def test_models_need_an_api_key(proxy: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=proxy.url) as anonymous:
        for path in ("/v1/models", "/v1/models/llama-3.3-70b"):
            response = await anonymous.get(path)
            assert response.status_code == 401
            assert response.json()["error"]["code"] == "invalid_api_key"


async def test_no_upstream_usage_is_counted_by_the_gateway(
    sdk: openai.AsyncOpenAI, funded: tuple[dict[str, Any], str], clean_db: AsyncEngine
) -> None:
    reply = await sdk.chat.completions.create(
        model="llama-3.1-8b",
        messages=[{"role": "user", "content": "count me"}],
        user="behaviour:no-usage",
    )
    assert reply.usage is None
    [event] = await events(clean_db, funded[0]["id"])
    assert event.usage_source == "estimated"
    assert event.prompt_tokens > 0 and event.completion_tokens > 0


async def test_upstream_unreachable_and_timeout(
    gateways: Any,
    funded: tuple[dict[str, Any], str],
    upstream: FakeUpstream,
    clean_db: AsyncEngine,
) -> None:
    unreachable = gateways.get(UPSTREAM_BASE_URL="http://127.0.0.1:9/v1")
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {funded[1]}"}) as client:
        body = {"model": "llama-3.1-8b", "messages": [{"role": "user", "content": "x"}]}
        response = await client.post(f"{unreachable.url}/v1/chat/completions", json=body)
        assert response.status_code == 502
        assert response.json()["error"]["code"] == "upstream_unavailable"
        assert response.headers["x-ratelimit-remaining-requests"]  # SPEC 3.1: every response
        slow = gateways.get(UPSTREAM_BASE_URL=upstream.url, TOLLGATE_UPSTREAM_READ_TIMEOUT=0.5)
        response = await client.post(
            f"{slow.url}/v1/chat/completions", json={**body, "user": "behaviour:hang"}
        )
        assert response.status_code == 504
        assert response.json()["error"]["code"] == "upstream_timeout"
        assert response.headers["x-ratelimit-limit-tokens"]
    assert await events(clean_db, funded[0]["id"]) == []
