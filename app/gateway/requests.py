"""What the gateway must know about a request before forwarding it: its model, whether it
streams, and an upper bound of what it can cost (SPEC 7). The body itself is forwarded as
the client sent it, apart from `stream_options` on streams."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from app.db.base import without_nul
from app.errors import InvalidJson, InvalidRequest
from app.gateway import audio, tokens
from app.metering.schemas import MAX_USER_LENGTH

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"
IMAGES = "/v1/images/generations"
TRANSCRIPTIONS = "/v1/audio/transcriptions"
SPEECH = "/v1/audio/speech"

# An upload whose container cannot be read is charged, when the upstream reports no duration
# either, as compressed speech of about 16 kB per second (its hold assumes far less).
AUDIO_BYTES_PER_SECOND = 16_000


@dataclass(slots=True)
class ProxyRequest:
    endpoint: str
    model: str
    body: dict[str, Any] | None  # parsed JSON; None for multipart uploads
    stream: bool = False
    client_wants_usage: bool = False
    # OpenRouter's `"usage": {"include": true}`: the cost in the response's usage (SPEC 3.1).
    wants_receipt: bool = False
    n: int = 1
    max_output_tokens: int = 0  # per choice
    prompt_tokens: int = 0  # the gateway's own count of the prompt
    prompt_unmeasured: bool = False  # it references content the gateway cannot count
    images_in: int = 0
    images_out: int = 0
    image_size: str | None = None
    image_quality: str | None = None
    audio_seconds_hold: int = 0  # the most seconds an upload can hold, for its credit hold
    audio_seconds_charged: int = 0  # charged when the upstream reports no duration
    characters: int = 0
    user: str | None = None


def parse_json_body(raw: bytes) -> dict[str, Any]:
    try:
        body = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        raise InvalidJson() from None
    except RecursionError:
        raise InvalidJson(too_deep=True) from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    return body


def _require(body: dict[str, Any], field: str, kind: type | tuple[type, ...], what: str) -> Any:
    if field not in body or body[field] is None:
        raise InvalidRequest(
            f"Missing required parameter: '{field}'.", param=field, code="missing_field"
        )
    value = body[field]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise InvalidRequest(
            f"Invalid type for '{field}': expected {what}.", param=field, code="invalid_type"
        )
    return value


# Bounds of the integers a hold is computed from: what upstreams accept (OpenAI: `n` ≤ 128,
# token counts in 32 bits), so a hold stays far inside the ledger's range.
MAX_N = 128
MAX_TOKENS = 2**31 - 1


def _optional_int(body: dict[str, Any], field: str, *, minimum: int, maximum: int) -> int | None:
    value = body.get(field)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value <= maximum:
        raise InvalidRequest(
            f"Invalid value for '{field}': expected an integer from {minimum} to {maximum}.",
            param=field,
            code="invalid_value",
        )
    return value


def _output_cap(body: dict[str, Any], *fields: str, minimum: int) -> int | None:
    """The larger of the output caps a request sets: an upstream may obey either."""
    caps = [_optional_int(body, field, minimum=minimum, maximum=MAX_TOKENS) for field in fields]
    return max((cap for cap in caps if cap is not None), default=None)


def _stream_flags(body: dict[str, Any], request: ProxyRequest) -> None:
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequest(
            "Invalid type for 'stream': expected a boolean.", param="stream", code="invalid_type"
        )
    request.stream = bool(stream)
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise InvalidRequest(
            "Invalid type for 'stream_options': expected an object.",
            param="stream_options",
            code="invalid_type",
        )
    request.client_wants_usage = bool(options and options.get("include_usage"))


def _user(fields: Mapping[str, Any]) -> str | None:
    """The end user a request is attributed to in usage, as Postgres can store it (the
    upstream still gets the body as sent): one request can never make its settlement, and the
    batch of others committed with it, fail."""
    user = fields.get("user")
    if not isinstance(user, str):
        return None
    if len(user) > MAX_USER_LENGTH:
        raise InvalidRequest(
            f"Invalid value for 'user': at most {MAX_USER_LENGTH} characters, got {len(user)}.",
            param="user",
            code="invalid_value",
        )
    return without_nul(user)


def inspect_json(endpoint: str, body: dict[str, Any], default_max_tokens: int) -> ProxyRequest:
    model = _require(body, "model", str, "a string")
    request = ProxyRequest(endpoint=endpoint, model=model, body=body, user=_user(body))
    accounting = body.get("usage")
    if isinstance(accounting, dict):  # removed before forwarding: no upstream knows it
        request.wants_receipt = accounting.get("include") is True
    if endpoint == CHAT:
        messages = _require(body, "messages", list, "an array of messages")
        if not messages:
            raise InvalidRequest(
                "'messages' must contain at least one message.",
                param="messages",
                code="invalid_value",
            )
        _stream_flags(body, request)
        prompt = tokens.count_chat(body, messages)
        request.prompt_tokens, request.images_in = prompt.tokens, prompt.images
        request.prompt_unmeasured = prompt.unmeasured
        request.n = _optional_int(body, "n", minimum=1, maximum=MAX_N) or 1
        cap = _output_cap(body, "max_completion_tokens", "max_tokens", minimum=1)
        request.max_output_tokens = cap or default_max_tokens
    elif endpoint == COMPLETIONS:
        prompt = _require(body, "prompt", (str, list), "a string or an array")
        _stream_flags(body, request)
        suffix = body.get("suffix")
        request.prompt_tokens = tokens.count_prompt(prompt) + (
            tokens.count_text(suffix) if isinstance(suffix, str) else 0
        )
        n = _optional_int(body, "n", minimum=1, maximum=MAX_N) or 1
        best_of = _optional_int(body, "best_of", minimum=1, maximum=MAX_N) or 1
        # `best_of` completions are generated (and billed) server-side, `n` of them returned.
        request.n = max(n, best_of) * max(1, _prompt_count(prompt))
        # SPEC 7's hold, not the legacy endpoint's documented 16 (seed 001): an upstream may
        # default higher, and a hold too small lets the credit be overdrawn.
        cap = _output_cap(body, "max_tokens", minimum=0)
        request.max_output_tokens = cap or default_max_tokens
    elif endpoint == EMBEDDINGS:
        embedded = _require(body, "input", (str, list), "a string or an array")
        request.prompt_tokens = tokens.count_prompt(embedded)
    elif endpoint == IMAGES:
        _require(body, "prompt", str, "a string")
        request.images_out = _optional_int(body, "n", minimum=1, maximum=MAX_N) or 1
        request.image_size = body.get("size") if isinstance(body.get("size"), str) else None
        request.image_quality = (
            body.get("quality") if isinstance(body.get("quality"), str) else None
        )
    elif endpoint == SPEECH:
        text = _require(body, "input", str, "a string")
        request.characters = len(text)
    return request


def inspect_transcription(
    form: dict[str, Any], upload_bytes: int, measured_seconds: float | None
) -> ProxyRequest:
    """`measured_seconds`: the upload's length read from its container, None if unreadable."""
    model = form.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest(
            "Missing required parameter: 'model'.", param="model", code="missing_field"
        )
    if upload_bytes <= 0:
        raise InvalidRequest(
            "Missing required parameter: 'file'.", param="file", code="missing_field"
        )
    request = ProxyRequest(endpoint=TRANSCRIPTIONS, model=model, body=None)
    request.user = _user(form)
    # Billed per started second, as providers bill audio.
    if measured_seconds is not None:
        request.audio_seconds_charged = max(1, math.ceil(measured_seconds))
    else:
        request.audio_seconds_charged = max(1, -(-upload_bytes // AUDIO_BYTES_PER_SECOND))
    request.audio_seconds_hold = max(
        1, math.ceil(audio.most_seconds(upload_bytes, measured_seconds))
    )
    return request


def _prompt_count(prompt: Any) -> int:
    """How many prompts a legacy `prompt` holds: each gets its own `n` completions."""
    if isinstance(prompt, list) and prompt and not all(isinstance(i, int) for i in prompt):
        return len(prompt)
    return 1
