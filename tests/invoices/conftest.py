"""Invoice fixtures: a gateway with the invoice routes, and usage priced by the real tables."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import datetime
from decimal import Decimal

import httpx
import msgspec
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import DEFAULT_PRICING_DIR
from app.metering.schemas import Settlement, UsageEventRecord
from app.metering.writer import UsageWriter
from app.pricing import Usage, charge_to_json, load_catalog, price
from tests.conftest import ADMIN_TOKEN
from tests.payments.apps import billing_app, start
from tests.support.live import LiveServer

CATALOG = load_catalog(DEFAULT_PRICING_DIR)


@pytest.fixture(scope="session")
def invoice_server(database_url: str) -> Iterator[LiveServer]:
    server = start(billing_app(database_url, None))
    yield server
    server.stop()


@pytest.fixture
def invoicing(invoice_server: LiveServer, clean_db: AsyncEngine) -> LiveServer:
    return invoice_server


@pytest.fixture
async def invoice_admin(invoicing: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=invoicing.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=60
    ) as client:
        yield client


def priced_event(account_id: str, at: datetime, model: str, usage: Usage) -> UsageEventRecord:
    """A usage event exactly as the gateway records it: priced by the rate version in force at
    `at`, with its itemised charge."""
    resolved = CATALOG.resolve(model, at)
    charge = price(resolved, usage)
    return UsageEventRecord(
        account_id=uuid.UUID(account_id),
        time=at,
        event_key=f"test:{uuid.uuid4()}",
        api_key_id=None,
        user=None,
        endpoint=usage.endpoint,
        model=charge.model,
        prompt_tokens=usage.prompt_tokens,
        cached_tokens=usage.cached_tokens,
        completion_tokens=usage.completion_tokens,
        images=usage.images_in,
        search_requests=usage.requests if resolved.rates.search is not None else 0,
        audio_seconds=Decimal(0),
        cost=charge.total,
        currency=charge.currency,
        price_version=charge.price_version.isoformat(),
        charge=msgspec.Raw(json.dumps(charge_to_json(charge)).encode()),
        usage_source="upstream",
        outcome="completed",
    )


async def record(engine: AsyncEngine, events: Sequence[UsageEventRecord]) -> None:
    """Through the real usage writer, as proxied or ingested usage is settled."""
    writer = UsageWriter(engine)
    writer.start()
    try:
        for event in events:
            await writer.settle(Settlement(event.account_id, None, event))
    finally:
        await writer.close()
