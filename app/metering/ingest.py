"""Event ingestion (`POST /admin/events`, SPEC 5; its route is `routes.ingest_events`): usage
recorded elsewhere becomes usage events priced with the rates in force at each event's time
and deducted like proxied usage — through the same settle statement, so the ledger entry, the
event and the balance move together.

A batch is all or nothing: every event is validated (shape, time, model, account, key) before
any is written, and an invalid batch answers 400 listing each bad event's index and reason.
Idempotent per (account, event id): the event key is `ext:<id>` and its ledger reference
`usage:ext:<id>` is unique per account, so a replayed event is counted once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec
from sqlalchemy.ext.asyncio import AsyncSession

from app.credits import repository as ledger
from app.errors import InvalidJson, InvalidRequest, ModelNotFound, TollgateError
from app.metering import repository
from app.metering.schemas import (
    EventProblem,
    IngestBatch,
    IngestEvent,
    RequestOutcome,
    UsageEventRecord,
    UsageSource,
)
from app.metering.service import usage_event
from app.pricing import Catalog, Endpoint, Usage, price

logger = logging.getLogger(__name__)

_encode = msgspec.json.Encoder().encode

# Events per settle statement. One statement per batch keeps account rows locked only from its
# balance update to the commit, moments, so proxied requests of those accounts barely wait.
CHUNK = 10_000
WRITE_ATTEMPTS = 4
MAX_REPORTED = 100  # problems listed in a 400; the count covers all

# Endpoints whose usage an ingested event can express: the counts below. Audio is priced by
# seconds or characters, which events do not carry, so it is refused rather than billed as 0.
INGESTIBLE_ENDPOINTS = (
    Endpoint.CHAT,
    Endpoint.COMPLETIONS,
    Endpoint.EMBEDDINGS,
    Endpoint.IMAGE_GENERATIONS,
)


class InvalidEvents(InvalidRequest):
    """400 for a batch with invalid events; none of the batch was written."""

    code = "invalid_events"

    def __init__(self, problems: Sequence[EventProblem], total: int) -> None:
        first = problems[0]
        super().__init__(
            f"{len(problems)} of {total} events are invalid, so none was ingested. "
            f"First: {first.param}: {first.reason}",
            param=first.param,
        )
        self.problems = list(problems)

    def body(self) -> dict[str, dict[str, Any]]:
        body: dict[str, dict[str, Any]] = dict(super().body())
        body["error"]["invalid_events"] = [p.view() for p in self.problems[:MAX_REPORTED]]
        body["error"]["invalid_count"] = len(self.problems)
        return body


class _Problem(Exception):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason


def decode_batch(body: bytes) -> list[IngestEvent]:
    """The events of a request body; raises `InvalidEvents` naming each malformed event."""
    try:
        return msgspec.json.decode(body, type=IngestBatch).events
    except msgspec.ValidationError:
        pass  # find every bad event below, not only the first
    except msgspec.DecodeError:
        raise InvalidJson() from None
    except RecursionError:
        raise InvalidJson(too_deep=True) from None
    try:
        raw = msgspec.json.decode(body)
    except RecursionError:  # the typed decode stopped at a type error before this depth
        raise InvalidJson(too_deep=True) from None
    if not isinstance(raw, dict) or set(raw) != {"events"} or not isinstance(raw["events"], list):
        raise InvalidRequest(
            'The body must be an object with one field, "events": a list of events.',
            param="events",
            code="invalid_type",
        )
    problems: list[EventProblem] = []
    for index, item in enumerate(raw["events"]):
        try:
            msgspec.json.decode(_encode(item), type=IngestEvent)
        except msgspec.ValidationError as exc:
            message, _, where = str(exc).partition(" - at `$")
            field = where.rstrip("`").lstrip(".")
            missing = message.startswith("Object missing required field `")
            if missing:
                field = message.split("`")[1]
            param = f"events[{index}]" + (f".{field}" if field else "")
            event_id = item.get("id") if isinstance(item, dict) else None
            problems.append(
                EventProblem(index, event_id if isinstance(event_id, str) else None, param, message)
            )
    raise InvalidEvents(problems, len(raw["events"]))


def price_event(event: IngestEvent, catalog: Catalog, now: datetime) -> UsageEventRecord:
    """The usage event for one ingested event, priced at the rates in force at its time.
    Raises `_Problem` when it cannot be recorded."""
    at = event.time.astimezone(UTC)  # partitions are by UTC month
    for field, value in (("id", event.id), ("user", event.user)):
        if value is not None and "\x00" in value:
            raise _Problem(field, "must not contain the NUL character (\\u0000)")
    if at > now:
        raise _Problem("time", f"is in the future (server time {now:%Y-%m-%dT%H:%M:%SZ})")
    if event.endpoint not in INGESTIBLE_ENDPOINTS:
        raise _Problem(
            "endpoint",
            f"{event.endpoint!r} cannot be ingested; use one of " + ", ".join(INGESTIBLE_ENDPOINTS),
        )
    try:
        resolved = catalog.resolve(event.model, at)
    except ModelNotFound as exc:
        raise _Problem("model", f"{exc.message} (at {at:%Y-%m-%dT%H:%M:%SZ})") from None
    searches = event.search_requests
    if searches is None:
        searches = 1 if resolved.suffix else 0
    elif searches and resolved.suffix is None:
        raise _Problem(
            "search_requests",
            f"model `{resolved.name}` has no search fee; use its -online or -deep variant",
        )
    generated = event.endpoint == Endpoint.IMAGE_GENERATIONS
    try:
        usage = Usage(
            endpoint=event.endpoint,
            prompt_tokens=event.prompt_tokens,
            cached_tokens=event.cached_tokens,
            completion_tokens=event.completion_tokens,
            images_in=0 if generated else event.images,
            images_out=event.images if generated else 0,
            requests=searches,
        )
    except ValueError as exc:
        raise _Problem("cached_tokens", str(exc)) from None
    try:
        charge = price(resolved, usage)
    except TollgateError as exc:  # not priced for this endpoint
        raise _Problem(exc.param or "model", exc.message) from None
    return usage_event(
        account_id=event.account_id,
        time=at,
        event_key=f"ext:{event.id}",
        api_key_id=event.api_key_id,
        user=event.user,
        resolved=resolved,
        usage=usage,
        charge=charge,
        source=UsageSource.INGESTED,
        outcome=RequestOutcome.COMPLETED,
    )


def price_events(
    events: Sequence[IngestEvent], catalog: Catalog, now: datetime
) -> tuple[list[UsageEventRecord], list[EventProblem]]:
    """Price every event (pure): the records, and the events that cannot be recorded."""
    records: list[UsageEventRecord] = []
    problems: list[EventProblem] = []
    for index, event in enumerate(events):
        try:
            records.append(price_event(event, catalog, now))
        except _Problem as problem:
            problems.append(
                EventProblem(index, event.id, f"events[{index}].{problem.field}", problem.reason)
            )
    return records, problems


async def owner_problems(
    session: AsyncSession, events: Sequence[IngestEvent]
) -> list[EventProblem]:
    """Events whose account does not exist or whose key belongs to another account."""
    accounts = await repository.known_accounts(session, {e.account_id for e in events})
    keys = await repository.key_accounts(
        session, {e.api_key_id for e in events if e.api_key_id is not None}
    )
    problems = []
    for index, event in enumerate(events):
        where = f"events[{index}]"
        if event.account_id not in accounts:
            reason = f"no account with id {event.account_id}"
            problems.append(EventProblem(index, event.id, f"{where}.account_id", reason))
        elif event.api_key_id is not None and keys.get(event.api_key_id) != event.account_id:
            reason = f"no API key {event.api_key_id} on account {event.account_id}"
            problems.append(EventProblem(index, event.id, f"{where}.api_key_id", reason))
    return problems


async def prepare(
    session: AsyncSession, events: Sequence[IngestEvent], *, catalog: Catalog, now: datetime
) -> list[UsageEventRecord]:
    """Validate and price every event; raises `InvalidEvents` listing each one that cannot be
    recorded (unknown account, another account's key, unpriced model, future time …).
    Pricing is CPU work: it runs in a thread, so the event loop keeps serving requests."""
    problems = await owner_problems(session, events)
    records, invalid = await asyncio.to_thread(price_events, events, catalog, now)
    if problems or invalid:
        raise InvalidEvents(sorted(problems + invalid, key=lambda p: p.index), len(events))
    return records


async def write(session: AsyncSession, records: Sequence[UsageEventRecord]) -> int:
    """Settle the events (no holds) in the caller's transaction, a statement per chunk; returns
    how many were new."""
    inserted = 0
    for offset in range(0, len(records), CHUNK):
        inserted += await ledger.settle(session, records[offset : offset + CHUNK])
    return inserted
