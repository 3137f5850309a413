"""Server-sent events read on the side of a relayed stream.

Bytes are forwarded event by event as they arrive; each event is decoded only to read the
usage and the delivered text. The usage the gateway asked for on the client's behalf is
hidden again (SPEC 3.1), and `data: [DONE]` is held back so that the usage commits first.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from app.gateway.tokens import TextTally, output_texts

_EVENT_END = re.compile(rb"\r?\n\r?\n")
DONE_EVENT = b"data: [DONE]\n\n"

_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode


class SseInspector:
    def __init__(self, *, client_wants_usage: bool) -> None:
        self.client_wants_usage = client_wants_usage
        self.usage: dict[str, Any] | None = None
        self.delivered = TextTally()  # tokens of the output delivered, in case of no usage
        self.saw_done = False
        self.head: dict[str, Any] = {}  # the last chunk's id, object, created and model
        self.events = 0  # data events carrying output, for "did the upstream produce anything"
        self._pending = b""

    def feed(self, chunk: bytes) -> bytes:
        """Complete events of `chunk` (plus what was pending) to forward now."""
        data = self._pending + chunk if self._pending else chunk
        if b"\r" in data:
            return self._feed_framed(data)
        # The usual framing, a blank line of "\n\n" after each event: split in C, and while no
        # event changes (the client sees all of them but `[DONE]`), forwarded in one slice.
        *events, self._pending = data.split(b"\n\n")
        changed = False
        out: list[bytes] = []
        for index, event in enumerate(events):
            replaced = self._event(event)
            if replaced is None:
                if changed:
                    out.append(event + b"\n\n")
                continue
            if not changed:
                changed = True
                out = [earlier + b"\n\n" for earlier in events[:index]]
            out.append(replaced)
        if changed:
            return b"".join(out)
        return data[: len(data) - len(self._pending)]

    def _feed_framed(self, data: bytes) -> bytes:
        """`feed` for events ended by any blank line, "\r\n" line ends included."""
        end = 0
        out: list[bytes] = []
        for match in _EVENT_END.finditer(data):
            replaced = self._event(data[end : match.start()])
            out.append(data[end : match.end()] if replaced is None else replaced)
            end = match.end()
        self._pending = data[end:]
        return b"".join(out)

    def flush(self) -> bytes:
        """What is left when the upstream closed without a final blank line."""
        rest, self._pending = self._pending, b""
        if not rest.strip():
            return b""
        replaced = self._event(rest)
        return rest + b"\n\n" if replaced is None else replaced

    def _event(self, event: bytes) -> bytes | None:
        """What to forward instead of `event` (its blank line left off): None for the event as
        it came, b"" for nothing."""
        payload = _data_of(event)
        if payload is None:
            return None  # comments, `event:`/`id:` only, keep-alives: pass through
        if payload == b"[DONE]":
            self.saw_done = True
            return b""
        try:
            chunk = _decode(payload)
        except (msgspec.DecodeError, RecursionError):
            return None
        if not isinstance(chunk, dict):
            return None
        for key in ("id", "object", "created", "model"):
            if key in chunk:
                self.head[key] = chunk[key]
        choices = chunk.get("choices")
        if isinstance(choices, list):
            for choice in choices:
                self._collect_text(choice)
            if choices:
                self.events += 1
        if "usage" not in chunk:
            return None
        usage = chunk["usage"]
        if isinstance(usage, dict):
            self.usage = usage
        if self.client_wants_usage:
            return None
        if not choices:
            return b""  # the usage-only chunk the client did not ask for
        del chunk["usage"]
        return b"data: " + _encode(chunk) + b"\n\n"

    def usage_chunk(self, usage: dict[str, Any]) -> bytes:
        """A final usage-only chunk, as OpenAI sends one for `include_usage`."""
        return b"data: " + _encode({**self.head, "choices": [], "usage": usage}) + b"\n\n"

    def _collect_text(self, choice: Any) -> None:
        if not isinstance(choice, dict):
            return
        index = choice.get("index")
        index = index if isinstance(index, int) else 0
        delta = choice.get("delta")
        if isinstance(delta, dict):
            for key, text in output_texts(delta):
                self.delivered.add((index, key), text)
        elif isinstance(choice.get("text"), str):
            self.delivered.add((index, "text"), choice["text"])


def _data_of(event: bytes) -> bytes | None:
    if event.startswith(b"data:") and b"\n" not in event:  # one line: the usual event
        return event[5:].removeprefix(b" ")
    lines = [line for line in event.splitlines() if line.startswith(b"data:")]
    if not lines:
        return None
    parts = [line[5:].removeprefix(b" ") for line in lines]
    return parts[0] if len(parts) == 1 else b"\n".join(parts)
