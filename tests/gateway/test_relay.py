"""The stream inspector's framing (app/gateway/relay.py): however a stream is cut into reads,
and whether its lines end in "\\n" (split in C) or "\\r\\n" (the regular expression), the
client gets the same events and the gateway learns the same usage and delivered text."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from app.gateway.relay import SseInspector

_text = st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=20)
_usage = st.fixed_dictionaries(
    {"prompt_tokens": st.integers(0, 99), "completion_tokens": st.integers(0, 99)}
)
_choice = st.fixed_dictionaries(
    {"index": st.integers(0, 2), "delta": st.fixed_dictionaries({"content": _text})}
)
_chunk = st.fixed_dictionaries(
    {"id": st.just("chatcmpl-1"), "choices": st.lists(_choice, max_size=2)},
    optional={"usage": st.none() | _usage, "model": st.sampled_from(["a", "b"])},
)


def _two_data_lines(chunk: dict[str, Any]) -> list[str]:
    """A chunk's JSON split over two `data:` lines, which SSE joins with a newline."""
    text = json.dumps(chunk)
    half = len(text) // 2
    return [f"data: {text[:half]}", f"data:{text[half:]}"]


_data = _chunk.map(lambda chunk: [f"data: {json.dumps(chunk)}"])
_split_data = _chunk.map(_two_data_lines)
# One event's lines: `data:` with a JSON chunk (on one line, or split over two), a comment, an
# `event:` line, `[DONE]`, or data that is not JSON.
_event = st.one_of(
    _data,
    _data,
    _split_data,
    st.just([": keep-alive"]),
    st.just(["event: message", "data: [DONE]"]),
    st.just(["data: [DONE]"]),
    st.just(["data: not json"]),
    st.just(["id: 7"]),
)


def _stream(events: list[list[str]], newline: str, tail: bool) -> bytes:
    text = "".join(newline.join(lines) + newline * 2 for lines in events)
    if tail and events:
        text = text[: -len(newline) * 2]  # the upstream closed without the last blank line
    return text.encode()


def _relay(stream: bytes, cuts: list[int], wants_usage: bool) -> tuple[bytes, Any]:
    inspector = SseInspector(client_wants_usage=wants_usage)
    points = sorted({cut % (len(stream) + 1) for cut in cuts})
    pieces = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    forwarded = b"".join(inspector.feed(piece) for piece in pieces) + inspector.flush()
    learnt = (
        inspector.usage,
        inspector.delivered.total(),
        inspector.saw_done,
        inspector.events,
        inspector.head,
    )
    return forwarded, learnt


@settings(max_examples=300, deadline=None)
@given(
    events=st.lists(_event, max_size=8),
    cuts=st.lists(st.integers(0, 10_000), max_size=6),
    wants_usage=st.booleans(),
    tail=st.booleans(),
)
def test_cuts_and_line_ends_change_nothing_the_client_gets_or_the_gateway_learns(
    events: list[list[str]], cuts: list[int], wants_usage: bool, tail: bool
) -> None:
    lf = _stream(events, "\n", tail)
    crlf = _stream(events, "\r\n", tail)
    whole, learnt = _relay(lf, [], wants_usage)
    assert _relay(lf, cuts, wants_usage) == (whole, learnt)
    forwarded, learnt_crlf = _relay(crlf, cuts, wants_usage)
    # Events passed through keep their own line ends; rewritten ones are the gateway's.
    assert forwarded.replace(b"\r\n", b"\n") == whole
    assert learnt_crlf == learnt


def test_events_are_forwarded_as_they_came_and_usage_hidden_when_not_asked_for() -> None:
    usage = {"prompt_tokens": 3, "completion_tokens": 2}
    stream = (
        b'data: {"choices":[{"index":0,"delta":{"content":"Hi"}}],"usage":null}\n\n'
        b": keep-alive\n\n"
        b'data: {"choices":[],"usage":' + json.dumps(usage).encode() + b"}\n\n"
        b"data: [DONE]\n\n"
    )
    forwarded, (learnt_usage, delivered, saw_done, events, _) = _relay(stream, [30, 75], False)
    assert forwarded == (
        b'data: {"choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n'  # usage: null removed
        b": keep-alive\n\n"
    )
    assert (learnt_usage, delivered, saw_done, events) == (usage, 1, True, 1)
    shown, _ = _relay(stream, [], True)
    assert shown == stream.removesuffix(b"data: [DONE]\n\n")  # [DONE] waits for the commit
