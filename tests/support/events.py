"""A usage event as the gateway records one, for tests that settle usage directly."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal

import msgspec

from app.metering.schemas import UsageEventRecord


def usage_event(
    account_id: uuid.UUID,
    cost: str,
    *,
    time: datetime | None = None,
    event_key: str | None = None,
) -> UsageEventRecord:
    return UsageEventRecord(
        account_id=account_id,
        time=time or datetime.now(UTC),
        event_key=event_key or f"gw:{uuid.uuid4().hex}",
        api_key_id=None,
        user=None,
        endpoint="/v1/chat/completions",
        model="llama-3.1-8b",
        prompt_tokens=10,
        cached_tokens=0,
        completion_tokens=5,
        images=0,
        search_requests=0,
        audio_seconds=Decimal(0),
        cost=Decimal(cost),
        currency="EUR",
        price_version="2025-01-01",
        charge=msgspec.Raw(b"[]"),
        usage_source="upstream",
        outcome="completed",
    )
