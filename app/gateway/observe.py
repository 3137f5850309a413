"""What an operator sees of each proxied request (SPEC 14): the Prometheus metrics, one log
line, and, when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, a trace with the OpenTelemetry GenAI
semantic conventions' attributes and spans for the hold, the upstream call and the settlement.

Tracing off costs one `is None` per stage: the OpenTelemetry SDK is not even imported.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from app.gateway import requests as rq
from app.gateway.metrics import REQUESTS, SPEND, TOKENS, labelled

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

logger = logging.getLogger("tollgate.requests")

# A model label for requests refused before their model was found in the catalog: the label
# set stays bounded whatever clients send.
UNRESOLVED = "unknown"

# GenAI `gen_ai.operation.name` of each endpoint.
_OPERATIONS = {
    rq.CHAT: "chat",
    rq.COMPLETIONS: "text_completion",
    rq.EMBEDDINGS: "embeddings",
    rq.IMAGES: "generate_content",
    rq.TRANSCRIPTIONS: "generate_content",
    rq.SPEECH: "generate_content",
}


@dataclass(slots=True)
class RequestTrail:
    """What is known of a request so far, filled in as it goes through the stages."""

    endpoint: str
    request_id: str
    started: float  # time.monotonic()
    span: Span | None = None
    model: str = UNRESOLVED  # the catalog name once resolved
    account_id: uuid.UUID | None = None
    key_prefix: str = ""
    upstream: str | None = None
    status: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    cost: Decimal | None = None
    currency: str | None = None
    done: bool = False


class Observer:
    def __init__(self, *, json_logs: bool, traces: bool) -> None:
        self.json_logs = json_logs
        self._provider: TracerProvider | None = None
        self._tracer: Tracer | None = None
        if traces:
            self._provider, self._tracer = _tracing()

    def begin(self, endpoint: str, request_id: str, started: float) -> RequestTrail:
        trail = RequestTrail(endpoint, request_id, started)
        if self._tracer is not None:
            trail.span = self._tracer.start_span(
                _OPERATIONS.get(endpoint, "chat"),
                kind=_server_kind(),
                attributes={
                    "gen_ai.operation.name": _OPERATIONS.get(endpoint, "chat"),
                    "http.request.method": "POST",
                    "url.path": endpoint,
                    "tollgate.request_id": request_id,
                },
            )
        return trail

    def stage(self, trail: RequestTrail, name: str, **attributes: Any) -> Span | None:
        """A child span of the request's (None when tracing is off); the caller ends it."""
        if trail.span is None or self._tracer is None:
            return None
        from opentelemetry import trace

        return self._tracer.start_span(
            name,
            context=trace.set_span_in_context(trail.span),
            kind=_client_kind() if name == "upstream" else _internal_kind(),
            attributes=attributes,
        )

    def finish(self, trail: RequestTrail) -> None:
        """Once per request, when its response has ended (or it was refused)."""
        if trail.done:
            return
        trail.done = True
        status = str(trail.status)
        labelled(REQUESTS, trail.endpoint, trail.model, status).inc()
        if trail.cost is not None:
            model = trail.model
            if trail.prompt_tokens:
                labelled(TOKENS, model, "input").inc(trail.prompt_tokens)
            if trail.cached_tokens:
                labelled(TOKENS, model, "cached_input").inc(trail.cached_tokens)
            if trail.completion_tokens:
                labelled(TOKENS, model, "output").inc(trail.completion_tokens)
            labelled(SPEND, model, trail.currency or "").inc(float(trail.cost))
        duration_ms = round((time.monotonic() - trail.started) * 1000, 1)
        if logger.isEnabledFor(logging.INFO):
            self._log(trail, duration_ms)
        if trail.span is not None:
            self._end_span(trail)

    def close(self) -> None:
        if self._provider is not None:
            self._provider.shutdown()  # flushes the spans still queued

    def _log(self, trail: RequestTrail, duration_ms: float) -> None:
        # Never a key, a token or a body: the key's displayed prefix and counts only.
        fields = {
            "request_id": trail.request_id,
            "account_id": str(trail.account_id) if trail.account_id else None,
            "key": trail.key_prefix or None,
            "endpoint": trail.endpoint,
            "model": trail.model,
            "upstream": trail.upstream,
            "status": trail.status,
            "prompt_tokens": trail.prompt_tokens,
            "completion_tokens": trail.completion_tokens,
            "cost": str(trail.cost) if trail.cost is not None else None,
            "currency": trail.currency,
            "duration_ms": duration_ms,
        }
        # The record made here, not by `logger.info`: it would walk the stack for the caller's
        # file, which is always this one.
        args: tuple[object, ...] = ()
        extra: dict[str, Any] | None = None
        if self.json_logs:
            message, extra = "request", {"fields": fields}
        else:  # joined by the log's thread, off the event loop
            message, args = "%s", (_Line(fields),)
        record = logger.makeRecord(
            logger.name, logging.INFO, __file__, 0, message, args, None, "_log", extra
        )
        logger.handle(record)

    def _end_span(self, trail: RequestTrail) -> None:
        span = trail.span
        assert span is not None
        span.update_name(f"{_OPERATIONS.get(trail.endpoint, 'chat')} {trail.model}")
        attributes: dict[str, Any] = {
            "gen_ai.request.model": trail.model,
            "http.response.status_code": trail.status,
        }
        if trail.upstream is not None:
            attributes["gen_ai.provider.name"] = trail.upstream
        if trail.account_id is not None:
            attributes["tollgate.account_id"] = str(trail.account_id)
        if trail.cost is not None:
            attributes.update(
                {
                    "gen_ai.usage.input_tokens": trail.prompt_tokens,
                    "gen_ai.usage.output_tokens": trail.completion_tokens,
                    "tollgate.cost": str(trail.cost),
                    "tollgate.currency": trail.currency or "",
                }
            )
        span.set_attributes(attributes)
        if trail.status >= 500:
            from opentelemetry.trace import Status, StatusCode

            span.set_status(Status(StatusCode.ERROR))
        span.end()


class _Line:
    """`key=value …` of a request's log fields, made when the line is formatted."""

    __slots__ = ("fields",)

    def __init__(self, fields: dict[str, Any]) -> None:
        self.fields = fields

    def __str__(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.fields.items() if v is not None)


def end_stage(span: Span | None, **attributes: Any) -> None:
    if span is not None:
        if attributes:
            span.set_attributes(attributes)
        span.end()


def _tracing() -> tuple[TracerProvider, Tracer]:
    """A provider of this app's own (not the global one: tests run several apps in a process)
    exporting over OTLP/HTTP in batches, off the request path."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": "tollgate"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider, provider.get_tracer("tollgate.gateway")


def _server_kind() -> Any:
    from opentelemetry.trace import SpanKind

    return SpanKind.SERVER


def _client_kind() -> Any:
    from opentelemetry.trace import SpanKind

    return SpanKind.CLIENT


def _internal_kind() -> Any:
    from opentelemetry.trace import SpanKind

    return SpanKind.INTERNAL
