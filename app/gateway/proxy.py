"""The request path of a proxied call (ENGINEERING.md):

auth → inspect → price check → credit hold → rate limit → upstream (pooled, streamed) →
usage capture → pricing → settlement (event + deduction + hold release, one commit) →
response ends.

Every request that got a hold ends in exactly one settlement, whatever way it ends; a usage
event is part of it whenever the upstream produced output.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, NoReturn

import aiohttp
import msgspec
from litestar import Request
from litestar.datastructures import UploadFile
from litestar.exceptions import InternalServerException
from litestar.exceptions.http_exceptions import RequestEntityTooLarge
from litestar.types import ASGIApp, Receive, Scope, Send

from app.accounts.auth import KeyAuthenticator, Principal
from app.config import Settings
from app.credits.holds import HoldKeeper, record_shortfall
from app.credits.leases import Lease
from app.credits.limits import LimitRefusal, seconds_until
from app.credits.repository import HoldOutcome
from app.credits.tiers import Tier, TierTable
from app.errors import (
    AccountSuspended,
    ClientDisconnected,
    InsufficientQuota,
    InvalidJson,
    InvalidRequest,
    ModelNotAllowed,
    SpendLimitExceeded,
    TollgateError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from app.gateway import audio
from app.gateway import requests as rq
from app.gateway.metrics import (
    HOLD_SECONDS,
    SETTLEMENT_SECONDS,
    UpstreamFailure,
    observe_upstream,
)
from app.gateway.observe import Observer, RequestTrail, end_stage
from app.gateway.relay import DONE_EVENT, SseInspector
from app.gateway.upstreams import CircuitBreaker, Router, Upstream, UpstreamCosts
from app.gateway.usage import MeteredUsage, estimate_usage, usage_from_body, usage_from_stream
from app.limits.service import RateLimiter
from app.metering.schemas import RequestOutcome, Settlement, UsageEventRecord
from app.metering.service import usage_event
from app.metering.writer import UsageWriter
from app.middleware import header, request_id
from app.money import money_str
from app.pricing import Catalog, Charge, ResolvedModel, price, receipt

logger = logging.getLogger(__name__)

_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode

# Bodies larger than this are inspected (parsed and their prompt counted) off the event loop,
# so a 25 MB prompt does not stall every other request while its tokens are counted; so are
# bodies of many messages or tools (each a tokenizer call, 32,000 of them in 256 kB).
INSPECT_INLINE_BYTES = 256 * 1024
INSPECT_INLINE_PARTS = 256

# Not forwarded upstream: hop-by-hop headers (RFC 9110 §7.6.1), the client's credentials and
# identity at OpenAI, and what the HTTP client sets itself.
_DROP_REQUEST_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "authorization",
        "api-key",
        "cookie",
        "accept-encoding",
        "openai-organization",
        "openai-project",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-real-ip",
        "expect",
    }
)
# Not relayed back: hop-by-hop, lengths/encodings the gateway re-frames, the upstream's own
# identity and rate limits (the client's limits are the gateway's).
_DROP_RESPONSE_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "content-encoding",
        "set-cookie",
        "server",
        "date",
        "x-request-id",
        "openai-organization",
        "openai-project",
    }
)


@dataclass(slots=True)
class Call:
    """One proxied request on its way through the gateway."""

    principal: Principal
    request: rq.ProxyRequest
    resolved: ResolvedModel
    hold_id: uuid.UUID
    hold_amount: Decimal
    request_id: str
    started: float  # time.monotonic() at arrival
    arrived: datetime  # the same instant on the wall clock: the time of its usage event
    trail: RequestTrail  # what the metrics, the log line and the trace report of it
    upstream: str | None = None  # the upstream it was sent to
    reserved_tokens: int = 0
    limit_headers: dict[str, str] = field(default_factory=dict)
    response_headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    settled: bool = False
    lease: Lease | None = None  # the credit lease its hold was granted from, if any


class Gateway:
    def __init__(
        self,
        *,
        settings: Settings,
        catalog: Catalog,
        router: Router,
        client: aiohttp.ClientSession,
        authenticator: KeyAuthenticator,
        holds: HoldKeeper,
        limiter: RateLimiter,
        tiers: TierTable,
        writer: UsageWriter,
        breaker: CircuitBreaker | None = None,
        observer: Observer | None = None,
        upstream_costs: UpstreamCosts | None = None,
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.router = router
        self.client = client
        self.authenticator = authenticator
        self.holds = holds
        self.limiter = limiter
        self.tiers = tiers
        self.writer = writer
        self.breaker = breaker or CircuitBreaker()
        self.upstream_costs = upstream_costs or UpstreamCosts()
        self.observer = observer or Observer(json_logs=False, traces=False)

    async def handle(self, request: Request[Any, Any, Any], endpoint: str) -> ASGIApp:
        trail = self.observer.begin(endpoint, request_id(request.scope), time.monotonic())
        try:
            app = await self._handle(request, endpoint, trail)
        except BaseException as exc:
            trail.status = exc.status_code if isinstance(exc, TollgateError) else 500
            self.observer.finish(trail)
            raise
        return _observed(app, trail, self.observer)

    async def _handle(
        self, request: Request[Any, Any, Any], endpoint: str, trail: RequestTrail
    ) -> ASGIApp:
        started = trail.started
        principal = await self.authenticator.authenticate(header(request.scope, b"authorization"))
        trail.account_id, trail.key_prefix = principal.account_id, principal.prefix
        if endpoint == rq.TRANSCRIPTIONS:
            raw = await _read_form_body(request)
            proxy_request = await _inspect_multipart(request)
        else:
            raw = await _read_body(request)
            proxy_request = await _inspect(endpoint, raw, self.settings.default_max_tokens)
        # Unpriced models, and models the key may not use, are refused before anything is
        # held or forwarded.
        arrived = datetime.now(UTC)
        resolved = self.catalog.resolve(proxy_request.model, arrived)
        trail.model = resolved.name
        if not principal.allows(resolved.name, resolved.base, resolved.suffix is not None):
            raise ModelNotAllowed(
                f"This API key may not use the model {resolved.name}.", param="model"
            )
        estimate = estimate_usage(proxy_request, resolved)
        hold_amount = price(resolved, estimate).total
        account_id = principal.account_id
        span = self.observer.stage(trail, "credit hold", **{"tollgate.hold": str(hold_amount)})
        hold_started = time.monotonic()
        hold = await self.holds.place(
            account_id,
            hold_amount,
            at=arrived,
            api_key_id=principal.api_key_id,
            user=proxy_request.user,
        )
        HOLD_SECONDS.observe(time.monotonic() - hold_started)
        end_stage(span, **{"tollgate.hold.granted": hold.granted})
        tier = self.tiers.tier_for(hold.total_purchased, hold.total_usage)
        if not hold.granted:
            raise await self._refusal(account_id, hold, hold_amount, tier, proxy_request.user)
        call = Call(
            principal,
            proxy_request,
            resolved,
            hold.hold_id,
            hold_amount,
            request_id(request.scope),
            started,
            arrived,
            trail,
            lease=hold.lease,
        )
        try:
            tokens = estimate.prompt_tokens + estimate.completion_tokens
            call.limit_headers = (await self.limiter.admit(account_id, tier, tokens)).headers()
            call.reserved_tokens = tokens  # corrected to the actual usage at settlement
            upstream_response = await self._send_upstream(call, request, raw)
        except BaseException as exc:
            await self._settle(call, None, RequestOutcome.NOT_FORWARDED)
            if isinstance(exc, TollgateError):  # e.g. 502/504: the limit headers still apply
                exc.headers = {**call.limit_headers, **exc.headers}
            raise
        try:
            return await self._respond(call, upstream_response)
        except BaseException:
            if not call.settled:
                await self._settle(call, None, RequestOutcome.GATEWAY_ERROR)
            raise

    async def _send_upstream(
        self, call: Call, request: Request[Any, Any, Any], raw: bytes
    ) -> aiohttp.ClientResponse:
        """The first usable response along the model's fallback order (SPEC 13): on a
        connection error, a timeout before the response starts, a 429 or a 5xx the next
        upstream is tried. Nothing has reached the client yet, so a retry is invisible to it;
        the last failure is what it gets when every upstream failed."""
        resolved = call.resolved
        attempts = self.breaker.order(
            self.router.route(resolved.name, resolved.base, resolved.suffix, call.request.model)
        )
        headers = self._upstream_headers(call, request)
        bodies: dict[str, bytes] = {}
        last = len(attempts) - 1
        for index, attempt in enumerate(attempts):
            upstream = attempt.upstream
            call.upstream = call.trail.upstream = upstream.name
            content = bodies.get(attempt.model)
            if content is None:
                content = bodies[attempt.model] = self._upstream_body(call, raw, attempt.model)
            span = self.observer.stage(
                call.trail,
                "upstream",
                **{"gen_ai.provider.name": upstream.name, "gen_ai.request.model": attempt.model},
            )
            started = time.monotonic()
            try:
                # Returns once the status and headers are in; the body is read or relayed later.
                response = await self._post(
                    upstream.base_url + call.request.endpoint.removeprefix("/v1"),
                    content,
                    [*headers, *_credentials(upstream)],
                )
            except TimeoutError as exc:
                end_stage(span, **{"error.type": "timeout"})
                self._upstream_failed(upstream, started, UpstreamFailure.TIMEOUT)
                if index < last:
                    continue
                raise UpstreamTimeout(
                    f"The upstream for {resolved.name} did not answer in time."
                ) from exc
            except aiohttp.ClientError as exc:
                end_stage(span, **{"error.type": type(exc).__name__})
                self._upstream_failed(upstream, started, UpstreamFailure.CONNECTION)
                if index < last:
                    continue
                raise UpstreamUnavailable(
                    f"The upstream for {resolved.name} could not be reached ({type(exc).__name__})."
                ) from exc
            end_stage(span, **{"http.response.status_code": response.status})
            if response.status == 429 or response.status >= 500:
                self._upstream_failed(upstream, started, UpstreamFailure.status(response.status))
                if index < last:
                    response.close()  # nothing of it is needed: a fresh connection is cheap
                    continue
            else:
                self.breaker.succeeded(upstream.name)
                observe_upstream(upstream.name, time.monotonic() - started)
            return response
        raise AssertionError("a route has at least one upstream")  # pragma: no cover

    async def _post(
        self, url: str, content: bytes, headers: list[tuple[str, str]]
    ) -> aiohttp.ClientResponse:
        try:
            return await self.client.post(url, data=content, headers=headers)
        except aiohttp.ServerDisconnectedError:
            # Most often a pooled connection the upstream closed just as it was reused (its
            # keep-alive ran out) and the request was never read: once more, on a fresh one.
            return await self.client.post(url, data=content, headers=headers)

    def _upstream_failed(self, upstream: Upstream, started: float, reason: UpstreamFailure) -> None:
        self.breaker.failed(upstream.name)
        observe_upstream(upstream.name, time.monotonic() - started, reason)

    def _upstream_body(self, call: Call, raw: bytes, upstream_model: str) -> bytes:
        """The body as sent to an upstream: the client's bytes unless something had to change
        (the model's name there, usage asked for on a stream, the receipt field removed)."""
        body = call.request.body
        accounting = isinstance(body, dict) and isinstance(body.get("usage"), dict)
        if body is None or not (
            upstream_model != call.request.model or call.request.stream or accounting
        ):
            return raw
        body = dict(body)
        body["model"] = upstream_model
        if accounting:
            del body["usage"]
        if call.request.stream:
            # Ask for usage on the client's behalf; hidden again if it did not ask.
            options = dict(body.get("stream_options") or {})
            options["include_usage"] = True
            body["stream_options"] = options
        try:
            return _encode(body)
        except RecursionError:  # decoded off the event loop, on a shallower stack
            raise InvalidJson(too_deep=True) from None

    @staticmethod
    def _upstream_headers(call: Call, request: Request[Any, Any, Any]) -> list[tuple[str, str]]:
        is_json = call.request.body is not None
        # Straight from the scope (ASGI servers give names in lower case): a Litestar `Headers`
        # is built anew on each access to `request.headers`.
        headers = [
            (name, raw_value.decode("latin-1"))
            for raw_name, raw_value in request.scope["headers"]
            if (name := raw_name.decode("latin-1")) not in _DROP_REQUEST_HEADERS
            and not (is_json and name == "content-type")
        ]
        if is_json:
            # Whatever the client declared, the body was parsed as JSON (and may be re-encoded).
            headers.append(("content-type", "application/json"))
        headers.append(("accept-encoding", "identity"))
        headers.append(("x-request-id", call.request_id))
        return headers

    async def _respond(self, call: Call, response: aiohttp.ClientResponse) -> ASGIApp:
        call.trail.status = response.status
        call.response_headers = _relayed_headers(response.raw_headers, call.limit_headers)
        is_sse = response.headers.get("content-type", "").startswith("text/event-stream")
        if response.status < 400 and is_sse:
            return self._stream_app(call, response)
        try:
            body = await response.read()
        except TimeoutError as exc:
            response.close()
            await self._settle(call, None, RequestOutcome.UPSTREAM_TIMEOUT)
            raise UpstreamTimeout("The upstream stopped answering mid-response.") from exc
        except aiohttp.ClientError as exc:
            response.close()
            await self._settle(call, None, RequestOutcome.UPSTREAM_BROKEN)
            raise UpstreamUnavailable("The upstream connection broke mid-response.") from exc
        except BaseException:
            response.close()
            raise
        response.release()  # read to the end: the connection goes back to the pool
        charge = None
        if response.status >= 400:
            # Passed through as it came; nothing was produced, nothing is charged.
            await self._settle(call, None, RequestOutcome.UPSTREAM_ERROR)
        else:
            usage = usage_from_body(call.request, call.resolved, body)
            charge = await self._settle(call, usage, RequestOutcome.COMPLETED)
            if call.request.wants_receipt and charge is not None:
                body = _with_receipt(body, charge)
        cost = money_str(charge.total) if charge is not None else "0.00"
        headers = [*call.response_headers, (b"x-tollgate-cost", cost.encode())]
        return _plain_app(response.status, headers, body)

    def _stream_app(self, call: Call, response: aiohttp.ClientResponse) -> ASGIApp:
        # With a receipt, the upstream's usage is held back and sent after the settlement,
        # with the cost, in a final usage chunk.
        inspector = SseInspector(
            client_wants_usage=call.request.client_wants_usage and not call.request.wants_receipt
        )
        status = response.status
        headers = call.response_headers

        async def pump(send: Send) -> RequestOutcome:
            try:
                async for chunk in response.content.iter_any():
                    forwarded = inspector.feed(chunk)
                    if forwarded:
                        await send(
                            {"type": "http.response.body", "body": forwarded, "more_body": True}
                        )
                tail = inspector.flush()
                if tail:
                    await send({"type": "http.response.body", "body": tail, "more_body": True})
            except TimeoutError:
                return RequestOutcome.UPSTREAM_TIMEOUT
            except aiohttp.ClientError:
                return RequestOutcome.UPSTREAM_BROKEN
            return RequestOutcome.COMPLETED

        client_left = False

        async def watch(receive: Receive) -> None:
            # The client leaving closes the upstream response, which cancels the upstream
            # request and wakes the relay's read with an error: the relay runs in the request's
            # own task, and this is its only companion.
            nonlocal client_left
            await _disconnected(receive)
            client_left = True
            response.close()

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            outcome = RequestOutcome.CLIENT_DISCONNECTED
            try:
                await send({"type": "http.response.start", "status": status, "headers": headers})
                watcher = asyncio.create_task(watch(receive))
                try:
                    relayed = await pump(send)
                finally:
                    watcher.cancel()  # before the response ends, which `receive` would report
                if not client_left:
                    outcome = relayed
            finally:
                if outcome == RequestOutcome.COMPLETED:
                    response.release()
                else:
                    response.close()  # also cancels the upstream request when the client left
                produced = inspector.events > 0 or inspector.usage is not None
                usage = (
                    usage_from_stream(call.request, call.resolved, inspector) if produced else None
                )
                charge = await self._settle(call, usage, outcome)
            if outcome == RequestOutcome.CLIENT_DISCONNECTED:
                return
            if outcome in _STREAM_FAILURES:
                # As OpenAI does mid-stream: an error event and no `[DONE]`, so SDKs raise.
                failure = _STREAM_FAILURES[outcome]
                await send({"type": "http.response.body", "body": failure, "more_body": False})
                return
            # What follows the commit goes in the last message: one write with the end of the
            # chunked body, not one each.
            last = []
            if call.request.wants_receipt and usage is not None and charge is not None:
                last.append(
                    inspector.usage_chunk(_usage_with_receipt(inspector.usage, usage, charge))
                )
            if inspector.saw_done:
                last.append(DONE_EVENT)
            await send({"type": "http.response.body", "body": b"".join(last), "more_body": False})

        return app

    async def _refusal(
        self,
        account_id: uuid.UUID,
        hold: HoldOutcome,
        amount: Decimal,
        tier: Tier,
        user: str | None,
    ) -> TollgateError:
        """The error for a hold that was not granted (SPEC 3, 3.6)."""
        if hold.refusal is LimitRefusal.SUSPENDED:
            return AccountSuspended("This account is suspended. Contact the operator.")
        if hold.refusal in (LimitRefusal.KEY_LIMIT, LimitRefusal.USER_LIMIT):
            whose = (
                "this API key"
                if hold.refusal is LimitRefusal.KEY_LIMIT
                else f"the end user {user!r}"
            )
            resets = (
                "It does not reset (a total limit)."
                if hold.resets_at is None
                else f"It resets at {hold.resets_at:%Y-%m-%dT%H:%M:%SZ}."
            )
            return SpendLimitExceeded(
                f"This request may cost up to {money_str(amount)}, more than is left of "
                f"the spend limit of {whose} ({money_str(hold.spend_limit or Decimal(0))}). "
                f"{resets}",
                code="key_limit_exceeded"
                if hold.refusal is LimitRefusal.KEY_LIMIT
                else "user_limit_exceeded",
                retry_after=seconds_until(hold.resets_at, datetime.now(UTC)),
            )
        state = await self.limiter.peek(account_id, tier)
        return InsufficientQuota(
            "You exceeded your current quota: this request may cost up to "
            f"{money_str(amount)} and your available credit is "
            f"{money_str(hold.available)}. Add credit to continue.",
            headers=state.headers(),
        )

    async def _settle(
        self, call: Call, usage: MeteredUsage | None, outcome: RequestOutcome
    ) -> Charge | None:
        """Settle the call (its one settlement); returns what it was charged, if anything."""
        call.settled = True
        account_id = call.principal.account_id
        charge = event = None
        if usage is not None:
            charge = price(call.resolved, usage.usage)
            event = self._event(call, usage, charge, outcome)
        if event is not None and event.cost > call.hold_amount:
            record_shortfall(call.request_id, call.hold_amount, event.cost, event.currency)
        span = self.observer.stage(call.trail, "settlement")
        settle_started = time.monotonic()
        lease = call.lease
        part = call.hold_amount if lease is not None else None
        committed = False
        try:
            await self.writer.settle(Settlement(account_id, call.hold_id, event, part))
            committed = True
        finally:
            self.holds.settled(call.hold_id, lease, call.hold_amount, committed)
        SETTLEMENT_SECONDS.observe(time.monotonic() - settle_started)
        end_stage(span)
        if event is not None:
            trail = call.trail
            trail.prompt_tokens, trail.cached_tokens = event.prompt_tokens, event.cached_tokens
            trail.completion_tokens = event.completion_tokens
            trail.cost, trail.currency = event.cost, event.currency
        used = 0 if usage is None else usage.usage.prompt_tokens + usage.usage.completion_tokens
        await self.limiter.correct(account_id, call.reserved_tokens, used)
        return charge

    def _event(
        self, call: Call, usage: MeteredUsage, charge: Charge, outcome: RequestOutcome
    ) -> UsageEventRecord:
        return usage_event(
            account_id=call.principal.account_id,
            time=call.arrived,
            event_key=f"gw:{os.urandom(16).hex()}",  # as unique as a uuid4, without building one
            api_key_id=call.principal.api_key_id,
            user=call.request.user,
            resolved=call.resolved,
            usage=usage.usage,
            charge=charge,
            source=usage.source,
            outcome=outcome,
            request_id=call.request_id,
            upstream=call.upstream,
            duration_ms=round((time.monotonic() - call.started) * 1000),
            upstream_cost=self.upstream_costs.cost(
                call.upstream, call.resolved.name, call.arrived, usage.usage
            ),
        )


async def _read_body(request: Request[Any, Any, Any]) -> bytes:
    """The whole body, as Litestar's `Request.body` reads it (the route's size limit on the
    announced length, then on what arrives) without its header parsing and generator; a JSON
    body is read once, here, and never again through Litestar."""
    limit = request.route_handler.resolve_request_max_body_size() or math.inf
    announced = header(request.scope, b"content-length")
    if announced is not None and announced.isdigit() and int(announced) > limit:
        raise RequestEntityTooLarge
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await request.receive()
        if message["type"] != "http.request":  # the only other one is `http.disconnect`
            _left(request)
        chunk = message["body"]
        if chunk:
            size += len(chunk)
            if size > limit:
                raise RequestEntityTooLarge
            chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _read_form_body(request: Request[Any, Any, Any]) -> bytes:
    """Through Litestar, which keeps it for `request.form()`."""
    try:
        return await request.body()
    except InternalServerException:  # Litestar's only one while reading a body
        _left(request)


def _left(request: Request[Any, Any, Any]) -> NoReturn:
    # Nothing is held yet: the client just never sees an answer.
    logger.debug("client left before its request body was read (%s)", request_id(request.scope))
    raise ClientDisconnected("The client disconnected before sending its request.") from None


async def _inspect(endpoint: str, raw: bytes, default_max_tokens: int) -> rq.ProxyRequest:
    if len(raw) > INSPECT_INLINE_BYTES:
        return await asyncio.to_thread(_inspect_json, endpoint, raw, default_max_tokens)
    body = rq.parse_json_body(raw)
    parts = sum(
        len(value) for key in ("messages", "tools") if isinstance(value := body.get(key), list)
    )
    if parts > INSPECT_INLINE_PARTS:
        return await asyncio.to_thread(_inspect_body, endpoint, body, default_max_tokens)
    return _inspect_body(endpoint, body, default_max_tokens)


def _inspect_json(endpoint: str, raw: bytes, default_max_tokens: int) -> rq.ProxyRequest:
    return _inspect_body(endpoint, rq.parse_json_body(raw), default_max_tokens)


def _inspect_body(endpoint: str, body: dict[str, Any], default_max_tokens: int) -> rq.ProxyRequest:
    try:
        return rq.inspect_json(endpoint, body, default_max_tokens)
    except RecursionError:  # re-encoding a part for its count, deeper than the decoder went
        raise InvalidJson(too_deep=True) from None


async def _inspect_multipart(request: Request[Any, Any, Any]) -> rq.ProxyRequest:
    try:
        form = await request.form()
    except Exception as exc:
        raise InvalidRequest(
            "The body must be multipart/form-data with a `file` and a `model`."
        ) from exc
    fields = {key: value for key, value in form.items() if isinstance(value, str)}
    upload = form.get("file")
    if upload is None:
        raise InvalidRequest(
            "Missing required parameter: 'file'.", param="file", code="missing_field"
        )
    if not isinstance(upload, UploadFile):
        raise InvalidRequest("'file' must be an uploaded file.", param="file", code="invalid_type")
    data = await upload.read()
    await upload.seek(0)
    measured = await asyncio.to_thread(audio.duration, data) if data else None
    return rq.inspect_transcription(fields, len(data), measured)


def _credentials(upstream: Upstream) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {upstream.api_key}")] if upstream.api_key else []


def _error_event(error: TollgateError) -> bytes:
    return b"data: " + _encode({"error": error.body()["error"]}) + b"\n\n"


_STREAM_FAILURES = {
    RequestOutcome.UPSTREAM_BROKEN: _error_event(
        UpstreamUnavailable("The upstream connection broke mid-stream.")
    ),
    RequestOutcome.UPSTREAM_TIMEOUT: _error_event(
        UpstreamTimeout("The upstream stopped answering mid-stream.")
    ),
}


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _relayed_headers(
    headers: Iterable[tuple[bytes, bytes]], limit_headers: dict[str, str]
) -> list[tuple[bytes, bytes]]:
    relayed = [
        (name, value)
        for name, value in headers
        if name.lower().decode("latin-1") not in _DROP_RESPONSE_HEADERS
        and not name.lower().startswith(b"x-ratelimit-")
    ]
    relayed.extend((name.encode(), value.encode()) for name, value in limit_headers.items())
    return relayed


def _usage_with_receipt(
    reported: dict[str, Any] | None, usage: MeteredUsage, charge: Charge
) -> dict[str, Any]:
    """The usage object a receipt rides on: the upstream's, else the gateway's own count."""
    if reported is None:
        counts = usage.usage
        total = counts.prompt_tokens + counts.completion_tokens
        reported = {
            "prompt_tokens": counts.prompt_tokens,
            "completion_tokens": counts.completion_tokens,
            "total_tokens": total,
        }
    return {**reported, **receipt(charge)}


def _with_receipt(body: bytes, charge: Charge) -> bytes:
    """A JSON reply with the receipt in its `usage` (added when the upstream sent none)."""
    try:
        document = _decode(body)
    except (msgspec.DecodeError, RecursionError):
        return body
    if not isinstance(document, dict):
        return body
    reported = document.get("usage")
    document["usage"] = {**(reported if isinstance(reported, dict) else {}), **receipt(charge)}
    return _encode(document)


def _observed(app: ASGIApp, trail: RequestTrail, observer: Observer) -> ASGIApp:
    """`app`, reporting the request once its response has ended."""

    async def observed(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await app(scope, receive, send)
        finally:
            observer.finish(trail)

    return observed


def _plain_app(status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> ASGIApp:
    all_headers = [*headers, (b"content-length", str(len(body)).encode())]

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": status, "headers": all_headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    return app
