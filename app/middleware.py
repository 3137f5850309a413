"""Cross-cutting HTTP pieces: the `x-request-id` on every response, errors and 404s included."""

from __future__ import annotations

import os

from litestar.datastructures import MutableScopeHeaders
from litestar.types import Message, Scope


def request_id(scope: Scope) -> str:
    """The client's `x-request-id` (as OpenAI accepts it) or a new one, fixed per request."""
    state = scope.setdefault("state", {})
    existing: str | None = state.get("request_id")
    if existing is None:
        existing = _client_request_id(scope) or f"req_{os.urandom(16).hex()}"
        state["request_id"] = existing
    return existing


async def add_request_id(message: Message, scope: Scope) -> None:
    """A `before_send` hook: runs for every response, even when no route matched."""
    if message["type"] == "http.response.start":
        MutableScopeHeaders.from_message(message)["x-request-id"] = request_id(scope)


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of a request header, by its lower-case name, straight from the scope
    (a Litestar `Headers` is built anew on each access to `request.headers`)."""
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


def _client_request_id(scope: Scope) -> str | None:
    for name, value in scope["headers"]:  # the first usable one of them all
        if name == b"x-request-id":
            text = value.decode("latin-1").strip()
            # Echoed into headers and logs: keep it short and printable.
            if 0 < len(text) <= 200 and text.isprintable():
                return text
    return None
