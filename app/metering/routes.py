"""Metering's routes: `POST /admin/events` (SPEC 5; `ingest` validates and prices) and
`GET /v1/generations/{id}` (SPEC 3.1), a request's usage event by its request id."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

from litestar import Request, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from app.accounts.auth import Principal
from app.admin.guards import require_admin
from app.db.engine import unit_of_work
from app.errors import NotFound
from app.metering import ingest, repository
from app.money import money_str
from app.pricing import Catalog
from app.pricing.serialize import stored_cost_details

logger = logging.getLogger(__name__)

WRITE_ATTEMPTS = 4


def _retryable(exc: DBAPIError) -> bool:
    # Concurrent settlements (the usage writer, other ingestions) lock account rows in no
    # particular order, so Postgres may break a deadlock by aborting this transaction.
    return getattr(exc.orig, "sqlstate", None) in ("40P01", "40001")


@post("/admin/events", status_code=200, guards=[require_admin], include_in_schema=False)
async def ingest_events(
    request: Request[Any, Any, Any], catalog: NamedDependency[Catalog], state: State
) -> dict[str, int]:
    """Owns its units of work (rather than the per-request one): the reads, each back-dated
    month's partition, and the write, which is retried when Postgres aborts it to break a
    deadlock. Commits before answering, so a usage query or a balance read right after sees
    every event."""
    events = ingest.decode_batch(await request.body())
    async with unit_of_work(state.sessionmaker) as session:
        records = await ingest.prepare(session, events, catalog=catalog, now=datetime.now(UTC))
    # Each partition in a short transaction of its own, before the events' one: creating one
    # locks the whole table, and would wait forever on a transaction that already wrote to it.
    for month in sorted({record.month for record in records}):
        async with unit_of_work(state.sessionmaker) as session:
            await repository.ensure_partition(session, month)
    for attempt in range(1, WRITE_ATTEMPTS + 1):
        try:
            async with unit_of_work(state.sessionmaker) as session:
                inserted = await ingest.write(session, records)
            break
        except DBAPIError as exc:
            if attempt == WRITE_ATTEMPTS or not _retryable(exc):
                raise
            logger.warning("ingestion aborted by a deadlock (attempt %d); retrying", attempt)
            await asyncio.sleep(0.02 * 4**attempt)
    return {"inserted": inserted, "duplicates": len(events) - inserted}


@get("/v1/generations/{request_id:str}")
async def get_generation(
    request_id: FromPath[str],
    principal: NamedDependency[Principal],
    db: NamedDependency[AsyncSession],
) -> dict[str, Any]:
    """The usage event of one of the key's account's requests, as soon as its response ended."""
    event = await repository.generation(db, principal.account_id, request_id)
    if event is None:
        raise NotFound(f"No generation with id {request_id!r}.", param="id")
    return {
        "data": {
            "id": event.request_id,
            "created": event.time.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "model": event.model,
            "endpoint": event.endpoint,
            "api_key_id": None if event.api_key_id is None else str(event.api_key_id),
            "user": event.user,
            "prompt_tokens": event.prompt_tokens,
            "cached_tokens": event.cached_tokens,
            "completion_tokens": event.completion_tokens,
            "images": event.images,
            "search_requests": event.search_requests,
            "cost": money_str(event.cost),
            "cost_details": stored_cost_details(event.charge),
            "currency": event.currency,
            "price_version": event.price_version,
            "usage_source": event.usage_source,
            "outcome": event.outcome,
            "upstream": event.upstream,
            "duration_ms": event.duration_ms,
        }
    }
