"""Request bodies and response views of the billing API. Unknown fields are refused."""

from __future__ import annotations

from typing import Any

import msgspec

from app.db.models import AutoRechargeSetting, RechargeAttempt, StripeCustomer
from app.money import money_str


class CheckoutRequest(msgspec.Struct, forbid_unknown_fields=True):
    amount: str | int


class AutoRechargeRequest(msgspec.Struct, forbid_unknown_fields=True):
    """`enabled` is required; `threshold` and `amount` are required when enabling and keep
    their saved values when omitted."""

    enabled: bool
    threshold: str | int | None = None
    amount: str | int | None = None


def _time(value: Any) -> str | None:
    return None if value is None else value.strftime("%Y-%m-%dT%H:%M:%SZ")


def auto_recharge_view(
    setting: AutoRechargeSetting | None,
    customer: StripeCustomer | None,
    last_attempt: RechargeAttempt | None,
    currency: str,
) -> dict[str, Any]:
    return {
        "object": "auto_recharge",
        "enabled": bool(setting and setting.enabled),
        "threshold": money_str(setting.threshold) if setting else None,
        "amount": money_str(setting.amount) if setting else None,
        "currency": currency,
        "payment_method_saved": bool(customer and customer.payment_method_id),
        # Set after a declined charge: no new attempt before this time.
        "retry_after": _time(setting.retry_after) if setting else None,
        "last_attempt": None
        if last_attempt is None
        else {
            "id": str(last_attempt.id),
            "status": last_attempt.status,
            "amount": money_str(last_attempt.amount),
            "created_at": _time(last_attempt.created_at),
            "error": last_attempt.error,
        },
    }
