"""Usage capture: what a request consumed, from the upstream's `usage` when it gives one and
from the gateway's own count otherwise (`usage_source = "estimated"`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from app.gateway import requests as rq
from app.gateway import tokens
from app.gateway.relay import SseInspector
from app.pricing import ResolvedModel, Usage

_decode = msgspec.json.Decoder().decode


@dataclass(frozen=True, slots=True)
class MeteredUsage:
    usage: Usage
    source: str  # "upstream" | "estimated"


def estimate_usage(request: rq.ProxyRequest) -> Usage:
    """The most a request can consume, for its credit hold (SPEC 7)."""
    return Usage(
        endpoint=request.endpoint,
        prompt_tokens=request.prompt_tokens,
        completion_tokens=request.n * request.max_output_tokens,
        images_in=request.images_in,
        images_out=request.images_out,
        image_size=request.image_size,
        image_quality=request.image_quality,
        audio_seconds=request.audio_seconds_estimate,
        characters=request.characters,
    )


def _token_usage(
    request: rq.ProxyRequest, reported: dict[str, Any] | None, delivered_tokens: Callable[[], int]
) -> MeteredUsage:
    if reported is not None and isinstance(reported.get("prompt_tokens"), int):
        details = reported.get("prompt_tokens_details")
        prompt = _count(reported["prompt_tokens"])
        return MeteredUsage(
            Usage(
                endpoint=request.endpoint,
                prompt_tokens=prompt,
                # A confused upstream must not turn into a failed settlement.
                cached_tokens=min(
                    prompt, _count(details.get("cached_tokens") if isinstance(details, dict) else 0)
                ),
                completion_tokens=_count(reported.get("completion_tokens")),
                images_in=request.images_in,
            ),
            "upstream",
        )
    return MeteredUsage(
        Usage(
            endpoint=request.endpoint,
            prompt_tokens=request.prompt_tokens,
            completion_tokens=delivered_tokens(),
            images_in=request.images_in,
        ),
        "estimated",
    )


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def usage_from_stream(
    request: rq.ProxyRequest, resolved: ResolvedModel, inspector: SseInspector
) -> MeteredUsage:
    return _token_usage(request, inspector.usage, inspector.delivered.total)


def usage_from_body(request: rq.ProxyRequest, resolved: ResolvedModel, body: bytes) -> MeteredUsage:
    endpoint = request.endpoint
    if endpoint == rq.SPEECH:
        # Speech is priced by the characters of its input, known from the request.
        return MeteredUsage(Usage(endpoint=endpoint, characters=request.characters), "estimated")
    try:
        parsed = _decode(body)
    except msgspec.DecodeError:
        parsed = None
    document = parsed if isinstance(parsed, dict) else {}
    reported = document.get("usage") if isinstance(document.get("usage"), dict) else None
    if endpoint == rq.IMAGES:
        data = document.get("data")
        produced = len(data) if isinstance(data, list) else request.images_out
        return MeteredUsage(
            Usage(
                endpoint=endpoint,
                images_out=produced,
                image_size=request.image_size,
                image_quality=request.image_quality,
            ),
            "upstream",
        )
    if endpoint == rq.TRANSCRIPTIONS:
        seconds = reported.get("seconds") if reported else None
        if isinstance(seconds, int | float) and seconds >= 0:
            # Billed per started second, as providers bill audio.
            return MeteredUsage(
                Usage(endpoint=endpoint, audio_seconds=int(-(-seconds // 1))), "upstream"
            )
        return MeteredUsage(
            Usage(endpoint=endpoint, audio_seconds=request.audio_seconds_estimate), "estimated"
        )
    delivered: list[str] = []
    if reported is None:
        for choice in document.get("choices") or []:
            if not isinstance(choice, dict):
                continue
            message = choice.get("message")
            if isinstance(message, dict) and isinstance(message.get("content"), str):
                delivered.append(message["content"])
            elif isinstance(choice.get("text"), str):
                delivered.append(choice["text"])
    return _token_usage(request, reported, lambda: sum(map(tokens.count_text, delivered)))
