"""The usage event as written, and a request's settlement (its event plus its hold release)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any

import msgspec

# An event's `user` becomes a usage group and a spend-limit key (SPEC 3.1).
MAX_USER_LENGTH = 256
MAX_ID_LENGTH = 255  # an ingested event's id is part of a unique index (as Stripe's keys)


class UsageSource(StrEnum):
    """Where an event's counts come from."""

    UPSTREAM = "upstream"  # the upstream's `usage`
    ESTIMATED = "estimated"  # the gateway's own count (SPEC 3.1)
    INGESTED = "ingested"  # POST /admin/events


class RequestOutcome(StrEnum):
    """How a metered request ended, stored on its usage event (and on none when nothing was
    charged)."""

    COMPLETED = "completed"
    CLIENT_DISCONNECTED = "client_disconnected"  # charged for what was produced until then
    UPSTREAM_BROKEN = "upstream_broken"  # the connection broke mid-response
    UPSTREAM_TIMEOUT = "upstream_timeout"  # the upstream stopped answering mid-response
    UPSTREAM_ERROR = "upstream_error"  # a 4xx/5xx passed through: nothing produced
    NOT_FORWARDED = "not_forwarded"  # refused (rate limit) or unreachable before forwarding
    GATEWAY_ERROR = "gateway_error"  # this gateway failed while answering


class UsageEventRecord(msgspec.Struct, frozen=True, gc=False, array_like=True):
    """Its fields are stored columns by name. A batch of them is encoded (by msgspec, in C) as
    one JSON array of arrays, the fields by position: Postgres parses no field names. The
    event's id is the id of its ledger entry, drawn by Postgres."""

    account_id: uuid.UUID
    time: datetime
    event_key: str  # unique per account; the ledger reference is `usage:<event_key>`
    api_key_id: uuid.UUID | None
    user: str | None
    endpoint: str
    model: str
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    images: int
    search_requests: int
    audio_seconds: Decimal
    cost: Decimal
    currency: str
    price_version: str
    charge: msgspec.Raw  # the itemised charge, as JSON
    usage_source: UsageSource
    outcome: RequestOutcome
    request_id: str | None = None  # a proxied request's x-request-id
    upstream: str | None = None  # the upstream that served it
    duration_ms: int | None = None  # from its arrival to its settlement
    # What the operator paid the upstream for it (its cost tables); None: not known (no
    # tables for that upstream or model, or an ingested event).
    upstream_cost: Decimal | None = None

    @property
    def month(self) -> date:
        return date(self.time.year, self.time.month, 1)


# Postgres types of the stored columns, named as the record's fields (a field without one fails
# at import).
_COLUMN_TYPES = {
    "account_id": "uuid",
    "time": "timestamptz",
    "event_key": "text",
    "api_key_id": "uuid",
    "user": "text",
    "endpoint": "text",
    "model": "text",
    "prompt_tokens": "bigint",
    "cached_tokens": "bigint",
    "completion_tokens": "bigint",
    "images": "integer",
    "search_requests": "integer",
    "audio_seconds": "numeric",
    "cost": "numeric",
    "currency": "text",
    "price_version": "text",
    "charge": "jsonb",
    "usage_source": "text",
    "outcome": "text",
    "request_id": "text",
    "upstream": "text",
    "duration_ms": "integer",
    "upstream_cost": "numeric",
}
# The stored columns in the record's field order (a field without a type fails at import).
EVENT_COLUMNS = tuple((name, _COLUMN_TYPES[name]) for name in UsageEventRecord.__struct_fields__)


@dataclass(frozen=True, slots=True)
class Settlement:
    """How a request ends: its usage event (None when nothing is charged) and the hold it
    releases (None when it held nothing). Both commit in one transaction."""

    account_id: uuid.UUID
    hold_id: uuid.UUID | None
    event: UsageEventRecord | None
    # When `hold_id` is a credit lease: the part of it this request held, which the
    # settlement takes out of the lease (the rest stays for the lease's other requests).
    lease_part: Decimal | None = None


# ── POST /admin/events ───────────────────────────────────────────────────────────────────────

Tokens = Annotated[int, msgspec.Meta(ge=0, le=10**12)]
Count = Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)]  # stored as `integer`


class IngestEvent(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    id: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_LENGTH)]
    account_id: uuid.UUID
    time: Annotated[datetime, msgspec.Meta(tz=True)]
    model: Annotated[str, msgspec.Meta(min_length=1)]
    endpoint: str
    prompt_tokens: Tokens
    completion_tokens: Tokens
    cached_tokens: Tokens = 0
    images: Count = 0
    # None: one search for a `-online`/`-deep` model (as a proxied request), none otherwise.
    search_requests: Count | None = None
    user: Annotated[str, msgspec.Meta(max_length=MAX_USER_LENGTH)] | None = None
    api_key_id: uuid.UUID | None = None


class IngestBatch(msgspec.Struct, forbid_unknown_fields=True):
    events: list[IngestEvent]


@dataclass(frozen=True, slots=True)
class EventProblem:
    index: int
    id: str | None
    param: str  # e.g. "events[3].time"
    reason: str

    def view(self) -> dict[str, Any]:
        return {"index": self.index, "id": self.id, "param": self.param, "reason": self.reason}
