"""Notification types, channels and delivery states; the admin API's request bodies."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import msgspec


class EventType(StrEnum):
    CREDIT_LOW = "credit.low"
    CREDIT_DEPLETED = "credit.depleted"
    KEY_LIMIT_REACHED = "key.limit_reached"
    USER_LIMIT_REACHED = "user.limit_reached"
    PAYMENT_SUCCEEDED = "payment.succeeded"
    PAYMENT_REFUNDED = "payment.refunded"
    AUTO_RECHARGE_SUCCEEDED = "auto_recharge.succeeded"
    AUTO_RECHARGE_FAILED = "auto_recharge.failed"
    INVOICE_FINALIZED = "invoice.finalized"
    TIER_CHANGED = "tier.changed"
    ACCOUNT_SUSPENDED = "account.suspended"


class Channel(StrEnum):
    WEBHOOK = "webhook"
    EMAIL = "email"


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # its retries ran out (24 h)


# The emails a customer gets (SPEC 11), each on unless turned off, with its subject.
EMAIL_SUBJECTS: dict[EventType, str] = {
    EventType.CREDIT_LOW: "Your credit is running low",
    EventType.PAYMENT_SUCCEEDED: "Payment received",
    EventType.INVOICE_FINALIZED: "Your invoice {number}",
    EventType.AUTO_RECHARGE_FAILED: "Auto-recharge failed",
    EventType.KEY_LIMIT_REACHED: "An API key reached its spend limit",
}

Url = Annotated[str, msgspec.Meta(pattern=r"^https?://[^\s\x00]+$", max_length=2000)]
Text = Annotated[str, msgspec.Meta(pattern=r"^[^\x00]*$", max_length=500)]


class CreateEndpoint(msgspec.Struct, forbid_unknown_fields=True):
    url: Url
    events: list[str] | None = None
    description: Text | None = None
