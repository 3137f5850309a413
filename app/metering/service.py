"""The one builder of usage event records, for proxied requests and ingested events alike."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

import msgspec

from app.metering.schemas import RequestOutcome, UsageEventRecord, UsageSource
from app.pricing import Charge, ResolvedModel, Usage, charge_json


def usage_event(
    *,
    account_id: uuid.UUID,
    time: datetime,
    event_key: str,
    api_key_id: uuid.UUID | None,
    user: str | None,
    resolved: ResolvedModel,
    usage: Usage,
    charge: Charge,
    source: UsageSource,
    outcome: RequestOutcome,
    request_id: str | None = None,
    upstream: str | None = None,
    duration_ms: int | None = None,
    upstream_cost: Decimal | None = None,
) -> UsageEventRecord:
    """The event of `usage` charged `charge` (priced from `resolved`). Only a suffixed model
    (`-online`, `-deep`) searches: its fee is charged per request of the usage."""
    return UsageEventRecord(
        account_id=account_id,
        time=time,
        event_key=event_key,
        api_key_id=api_key_id,
        user=user,
        endpoint=usage.endpoint,
        model=resolved.name,
        prompt_tokens=usage.prompt_tokens,
        cached_tokens=usage.cached_tokens,
        completion_tokens=usage.completion_tokens,
        images=usage.images_in + usage.images_out,
        search_requests=usage.requests if resolved.suffix else 0,
        audio_seconds=Decimal(usage.audio_seconds),
        cost=charge.total,
        currency=charge.currency,
        price_version=str(charge.price_version),
        charge=msgspec.Raw(charge_json(charge)),
        usage_source=source,
        outcome=outcome,
        request_id=request_id,
        upstream=upstream,
        duration_ms=duration_ms,
        upstream_cost=upstream_cost,
    )
