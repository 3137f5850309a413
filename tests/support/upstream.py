"""The fake upstream for gateway tests: the built-in echo upstream (`app.demo.echo`) on a
real loopback port, plus fault injection and a record of what it received.

The gateway forwards only a safe set of headers and refuses unpriced model names, but passes
`user` and unknown body fields through unchanged, so a request picks its behaviour there:
`"user": "behaviour:slow,no-usage"`, or `"metadata": {"test_behaviour": "slow,no-usage"}`
(for transcriptions: the multipart `user` field). Behaviours, combinable with commas:

    no-usage                     no `usage` anywhere, even if the stream asked for it
    usage-on-last-choice-chunk   usage rides on the final chunk with choices (seed 004)
    usage:P:C                    report P prompt and C completion tokens
    slow                         0.2 s between stream chunks, and before a JSON reply
    slow-first-byte:X            X seconds before the response headers
    break-midway                 a few chunks (or half the JSON body), then the connection drops
    error-500, error-429, error-400 (any error-NNN)   that status, OpenAI-shaped body
    huge:N                       a stream of N MiB of content, generated lazily, usage at the end
    long:N                       a stream of N content chunks, 0.05 s apart
    hang                         never answer (until the client gives up)
    openai-count                 report prompt tokens as OpenAI bills them (support/openai_count)
    tool-call:N                  a chat reply that is one tool call with N characters of arguments
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
from dataclasses import dataclass, replace
from typing import Any

import msgspec

from app.demo import echo
from tests.support import openai_count
from tests.support.live import LiveServer

SLOW_SECONDS = 0.2
LONG_CHUNK_SECONDS = 0.05
HANG_SECONDS = 600
BREAK_AFTER_EVENTS = 4  # the role chunk and three pieces of content
MIB = 1024 * 1024
_LOREM = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor "
_HUGE_PIECE = (_LOREM * (16384 // len(_LOREM) + 1))[:16384]
_ERRORS = {
    400: ("invalid_request_error", "invalid_value", "Invalid value for 'temperature'."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests."),
    500: ("server_error", None, "upstream exploded"),
}


@dataclass(frozen=True, slots=True)
class Behaviour:
    no_usage: bool = False
    usage_on_last_choice_chunk: bool = False
    usage: tuple[int, int] | None = None
    slow: bool = False
    first_byte_delay: float = 0.0
    break_midway: bool = False
    error: int | None = None
    huge_mib: int = 0
    long: int = 0
    hang: bool = False
    openai_count: bool = False
    tool_call: int = 0

    @classmethod
    def parse(cls, spec: str) -> Behaviour:
        values: dict[str, Any] = {}
        for item in filter(None, (part.strip() for part in spec.split(","))):
            name, _, arg = item.partition(":")
            try:
                match name:
                    case (
                        "no-usage"
                        | "usage-on-last-choice-chunk"
                        | "slow"
                        | "break-midway"
                        | "hang"
                        | "openai-count"
                    ):
                        values[name.replace("-", "_")] = True
                    case "usage":
                        prompt, completion = arg.split(":")
                        values["usage"] = (int(prompt), int(completion))
                    case "slow-first-byte":
                        values["first_byte_delay"] = float(arg)
                    case "huge" | "long":
                        values["huge_mib" if name == "huge" else "long"] = int(arg)
                    case "tool-call":
                        values["tool_call"] = int(arg)
                    case _ if name.startswith("error-"):
                        values["error"] = int(name.removeprefix("error-"))
                    case _:
                        raise ValueError(name)
            except ValueError:
                raise ValueError(f"unknown test behaviour {item!r}") from None
        return cls(**values)

    @property
    def options(self) -> echo.ReplyOptions:
        usage: echo.UsagePlacement = "requested"
        if self.no_usage:
            usage = "omitted"
        elif self.usage_on_last_choice_chunk:
            usage = "on-last-choice-chunk"
        if self.huge_mib:
            pieces = -(-self.huge_mib * MIB // len(_HUGE_PIECE))
            return echo.ReplyOptions(usage, lambda: itertools.repeat(_HUGE_PIECE, pieces))
        if self.long:
            count = self.long
            return echo.ReplyOptions(usage, lambda: itertools.repeat(" tick", count))
        return echo.ReplyOptions(usage)

    @property
    def chunk_delay(self) -> float:
        return SLOW_SECONDS if self.slow else LONG_CHUNK_SECONDS if self.long else 0.0


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # names lowercased
    body: Any  # parsed JSON; a multipart form as {name: str, or bytes for files}; else bytes


@dataclass(frozen=True, slots=True)
class StreamRecord:
    id: str  # the chunks' `id`
    outcome: str  # "completed" | "cancelled" (the client left first) | "broken" (break-midway)


def behaviour_spec(request: echo.EchoRequest) -> str:
    """The behaviours a request asks for, comma-separated ("" for none)."""
    user: Any = None
    metadata: Any = None
    try:
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            field = request.form.get("user")
            user = field.value.decode() if field else None
        elif isinstance(body := request.json, dict):
            user, metadata = body.get("user"), body.get("metadata")
    except (msgspec.DecodeError, echo.BadRequest, UnicodeDecodeError):
        return ""  # the echo answers malformed bodies itself
    specs = []
    if isinstance(user, str) and user.startswith("behaviour:"):
        specs.append(user.removeprefix("behaviour:"))
    if isinstance(metadata, dict) and isinstance(metadata.get("test_behaviour"), str):
        specs.append(metadata["test_behaviour"])
    return ",".join(specs)


def error_reply(status: int) -> echo.Reply:
    kind, code, message = _ERRORS.get(
        status,
        ("server_error" if status >= 500 else "invalid_request_error", None, f"error {status}"),
    )
    return echo.error_reply(status, message, kind=kind, code=code)


def _fixed_usage(reply: echo.Reply, prompt: int, completion: int) -> echo.Reply:
    usage = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }

    def fix(document: Any) -> Any:
        if isinstance(document, dict) and isinstance(document.get("usage"), dict):
            document["usage"] = dict(usage)
        return document

    if reply.events is not None:
        return replace(reply, events=map(fix, reply.events))
    return replace(reply, payload=fix(reply.payload))


def _openai_counted(reply: echo.Reply, prompt: int) -> echo.Reply:
    """`reply` with its usage's prompt tokens as OpenAI would bill the request."""

    def fix(document: Any) -> Any:
        usage = document.get("usage") if isinstance(document, dict) else None
        if isinstance(usage, dict):
            usage["prompt_tokens"] = prompt
            usage["total_tokens"] = prompt + usage.get("completion_tokens", 0)
        return document

    if reply.events is not None:
        return replace(reply, events=map(fix, reply.events))
    return replace(reply, payload=fix(reply.payload))


TOOL_NAME = "lookup_order"
TOOL_PIECE = 97  # characters of arguments per stream chunk


def tool_call_arguments(length: int) -> str:
    """Deterministic tool-call arguments of `length` characters, word-like like real ones."""
    words = " ".join(f"order-{i} shipped to warehouse {i % 17}" for i in range(length // 8 + 1))
    text = '{"note": "' + words
    return text[:length]


def _tool_call_reply(body: dict[str, Any], length: int, wants_usage: bool) -> echo.Reply:
    arguments = tool_call_arguments(length)
    head = {"id": "chatcmpl-tool", "created": 1, "model": body.get("model")}
    completion = openai_count.tokens(arguments) + openai_count.tokens(TOOL_NAME)
    usage = {"prompt_tokens": 10, "completion_tokens": completion, "total_tokens": 10 + completion}
    if body.get("stream") is not True:
        call = {"id": "call_1", "type": "function"}
        call["function"] = {"name": TOOL_NAME, "arguments": arguments}
        message = {"role": "assistant", "content": None, "tool_calls": [call]}
        choice = {"index": 0, "message": message, "finish_reason": "tool_calls"}
        document = {**head, "object": "chat.completion", "choices": [choice], "usage": usage}
        return echo.Reply(payload=document)

    def events() -> Any:
        chunk = {**head, "object": "chat.completion.chunk"}

        def delta(value: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {**chunk, "choices": [{"index": 0, "delta": value, "finish_reason": finish}]}

        start = {"index": 0, "id": "call_1", "type": "function"}
        start["function"] = {"name": TOOL_NAME, "arguments": ""}
        yield delta({"role": "assistant", "content": None, "tool_calls": [start]})
        for at in range(0, len(arguments), TOOL_PIECE):
            piece = {"index": 0, "function": {"arguments": arguments[at : at + TOOL_PIECE]}}
            yield delta({"tool_calls": [piece]})
        yield delta({}, "tool_calls")
        if wants_usage:
            yield {**chunk, "choices": [], "usage": usage}

    return echo.Reply(events=events(), id=head["id"])


def _recorded_body(request: echo.EchoRequest) -> Any:
    try:
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            return {
                name: field.value if field.filename is not None else field.value.decode()
                for name, field in request.form.items()
            }
        return request.json
    except (msgspec.DecodeError, echo.BadRequest, UnicodeDecodeError):
        return request.body


class FakeUpstream:
    """`FakeUpstream().start()`; `.url` ends in `/v1`. Thread-safe: the server runs in its own
    thread and event loop, tests read `requests`, `streams` and the counters from theirs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._streams: list[StreamRecord] = []
        self._active = 0
        # Streams still running when a test resets must not count toward the next test.
        self._generation = 0
        # Behaviours for every request, e.g. "error-503" for an upstream that is down.
        self.forced = ""

        # A plain coroutine function: uvicorn takes a bound method for an ASGI2 app.
        async def app(scope: echo.Scope, receive: echo.Receive, send: echo.Send) -> None:
            await self._handle(scope, receive, send)

        self._server = LiveServer(app)

    def start(self) -> FakeUpstream:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    @property
    def url(self) -> str:
        return f"{self._server.url}/v1"

    def reset(self) -> None:
        with self._lock:
            self._requests.clear()
            self._streams.clear()
            self._generation += 1
            self.forced = ""

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def streams(self) -> list[StreamRecord]:
        """Streams that ended, in the order they ended."""
        with self._lock:
            return list(self._streams)

    @property
    def cancelled_streams(self) -> int:
        return sum(1 for s in self.streams if s.outcome == "cancelled")

    @property
    def active_streams(self) -> int:
        with self._lock:
            return self._active

    async def _handle(self, scope: echo.Scope, receive: echo.Receive, send: echo.Send) -> None:
        if scope["type"] == "lifespan":
            await echo.lifespan(receive, send)
            return
        request = await echo.read_request(scope, receive)
        recorded = RecordedRequest(
            request.method, request.path, request.headers, _recorded_body(request)
        )
        with self._lock:
            self._requests.append(recorded)
            generation = self._generation
        try:
            behaviour = Behaviour.parse(
                ",".join(filter(None, (self.forced, behaviour_spec(request))))
            )
        except ValueError as exc:
            await echo.serve(echo.error_reply(400, str(exc), param="user"), receive, send)
            return
        if behaviour.hang:
            # Returning once the client has given up: uvicorn sends nothing to a closed peer.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(echo.wait_for_disconnect(receive), HANG_SECONDS)
            return
        await asyncio.sleep(behaviour.first_byte_delay)
        if behaviour.error:
            reply = error_reply(behaviour.error)
        elif behaviour.tool_call:
            body = request.json
            options = body.get("stream_options")
            wants_usage = not behaviour.no_usage and (
                body.get("stream") is not True
                or (isinstance(options, dict) and options.get("include_usage") is True)
            )
            reply = _tool_call_reply(body, behaviour.tool_call, wants_usage)
            if not wants_usage and reply.payload is not None:
                reply.payload.pop("usage")
        else:
            reply = echo.respond(request, behaviour.options)
        if behaviour.usage:
            reply = _fixed_usage(reply, *behaviour.usage)
        if behaviour.openai_count:
            reply = _openai_counted(reply, openai_count.prompt_tokens(request.json))
        complete = not behaviour.break_midway
        if reply.events is None:
            await asyncio.sleep(SLOW_SECONDS if behaviour.slow else 0)
            await echo.serve(reply, receive, send, complete=complete)
            return
        if not complete:
            reply = replace(reply, events=itertools.islice(reply.events, BREAK_AFTER_EVENTS))
        with self._lock:
            self._active += 1
        delivered = False
        try:
            delivered = await echo.serve(
                reply, receive, send, chunk_delay=behaviour.chunk_delay, complete=complete
            )
        finally:
            outcome = "broken" if not complete else "completed" if delivered else "cancelled"
            with self._lock:
                self._active -= 1
                if generation == self._generation:
                    self._streams.append(StreamRecord(reply.id or "", outcome))
