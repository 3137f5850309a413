"""Usage capture: what a request consumed, from the upstream's `usage` when it gives one and
from the gateway's own count otherwise (`usage_source = "estimated"`)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from app.gateway import requests as rq
from app.gateway import tokens
from app.gateway.relay import SseInspector
from app.metering.schemas import UsageSource
from app.pricing import DEFAULT_IMAGE_TOKENS, ResolvedModel, Usage

_decode = msgspec.json.Decoder().decode


@dataclass(frozen=True, slots=True)
class MeteredUsage:
    usage: Usage
    source: UsageSource


def _image_tokens(resolved: ResolvedModel) -> int:
    allowance = resolved.prices.image_tokens
    return DEFAULT_IMAGE_TOKENS if allowance is None else allowance


# The context assumed for a model whose rate table gives none, when a prompt references content
# the gateway cannot count.
DEFAULT_CONTEXT_TOKENS = 131_072


def prompt_estimate(request: rq.ProxyRequest, resolved: ResolvedModel) -> int:
    """The most prompt tokens a request can be billed, for its hold: the gateway's count with
    images at the model's per-image allowance, and never more than the model's context holds
    (an upstream refuses a longer prompt). A prompt referencing content the gateway cannot
    count (a file by id, audio or video by URL) may fill that context."""
    estimate = request.prompt_tokens + request.images_in * _image_tokens(resolved)
    context = resolved.prices.context_length
    if request.prompt_unmeasured:
        return max(estimate, context or DEFAULT_CONTEXT_TOKENS)
    return estimate if context is None else min(estimate, context)


def estimate_usage(request: rq.ProxyRequest, resolved: ResolvedModel) -> Usage:
    """The most a request can consume, for its credit hold (SPEC 7)."""
    return Usage(
        endpoint=request.endpoint,
        prompt_tokens=prompt_estimate(request, resolved),
        completion_tokens=request.n * request.max_output_tokens,
        images_in=request.images_in,
        images_out=request.images_out,
        image_size=request.image_size,
        image_quality=request.image_quality,
        audio_seconds=request.audio_seconds_hold,
        characters=request.characters,
    )


def _token_usage(
    request: rq.ProxyRequest,
    reported: dict[str, Any] | None,
    delivered_tokens: Callable[[], int],
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
            UsageSource.UPSTREAM,
        )
    # The gateway's own count: images are charged by the model's per-image price, not by the
    # hold's allowance.
    return MeteredUsage(
        Usage(
            endpoint=request.endpoint,
            prompt_tokens=request.prompt_tokens,
            completion_tokens=delivered_tokens(),
            images_in=request.images_in,
        ),
        UsageSource.ESTIMATED,
    )


def _count(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        return 0
    # Beyond any real reply; a larger count would fail the settlement's integer columns.
    return min(value, rq.MAX_TOKENS)


def usage_from_stream(
    request: rq.ProxyRequest, resolved: ResolvedModel, inspector: SseInspector
) -> MeteredUsage:
    return _token_usage(request, inspector.usage, inspector.delivered.total)


def _reported_seconds(reported: dict[str, Any] | None, document: dict[str, Any]) -> float | None:
    """A transcription's length as the upstream reports it: usage seconds, else the
    `duration` of a `verbose_json` reply."""
    for value in (reported.get("seconds") if reported else None, document.get("duration")):
        if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < 1e9:
            return float(value)
    return None


def delivered_tokens(document: dict[str, Any]) -> int:
    """The gateway's count of a JSON reply's output: every choice's text, reasoning, refusal
    and tool or function calls."""
    tally = tokens.TextTally()
    choices = document.get("choices")
    for position, choice in enumerate(choices if isinstance(choices, list) else ()):
        if not isinstance(choice, dict):
            continue
        message = choice.get("message")
        if isinstance(message, dict):
            for key, text in tokens.output_texts(message):
                tally.add((position, key), text)
        elif isinstance(choice.get("text"), str):
            tally.add((position, "text"), choice["text"])
    return tally.total()


def usage_from_body(request: rq.ProxyRequest, resolved: ResolvedModel, body: bytes) -> MeteredUsage:
    endpoint = request.endpoint
    if endpoint == rq.SPEECH:
        # Speech is priced by the characters of its input, known from the request.
        return MeteredUsage(
            Usage(endpoint=endpoint, characters=request.characters), UsageSource.ESTIMATED
        )
    try:
        parsed = _decode(body)
    except (msgspec.DecodeError, RecursionError):  # counted by the gateway instead
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
            UsageSource.UPSTREAM,
        )
    if endpoint == rq.TRANSCRIPTIONS:
        seconds = _reported_seconds(reported, document)
        if seconds is not None:
            # Billed per started second, as providers bill audio.
            return MeteredUsage(
                Usage(endpoint=endpoint, audio_seconds=math.ceil(seconds)), UsageSource.UPSTREAM
            )
        return MeteredUsage(
            Usage(endpoint=endpoint, audio_seconds=request.audio_seconds_charged),
            UsageSource.ESTIMATED,
        )
    return _token_usage(request, reported, lambda: delivered_tokens(document))
