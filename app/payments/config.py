"""Billing settings: top-up limits, auto-recharge guards, invoice grace period, seller details.

Read from `app.config.Settings` where it has the field and from the defaults below otherwise,
so this domain works before every setting is declared there (see the issue note for the
environment variable names).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import Any

from app.config import Settings
from app.credits.tiers import TierTable


@dataclass(frozen=True, slots=True)
class Seller:
    """Who issues the invoices, as printed on them."""

    name: str = "Tollgate"
    address: tuple[str, ...] = ()
    vat_id: str | None = None
    email: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "address": list(self.address),
            "vat_id": self.vat_id,
            "email": self.email,
        }


@dataclass(frozen=True, slots=True)
class BillingConfig:
    stripe_api_key: str | None = None
    stripe_webhook_secret: str | None = None
    stripe_api_base: str | None = None
    public_url: str = "http://127.0.0.1:8080"
    topup_min: Decimal = Decimal("5.00")
    topup_max: Decimal = Decimal("10000.00")
    # Webhook timestamps older than this are refused (Stripe's recommended default).
    webhook_tolerance_seconds: int = 300
    recharge_max_per_hour: int = 3
    # After a decline: base × 2^(failures − 1), at most `recharge_backoff_max`.
    recharge_backoff: timedelta = timedelta(hours=1)
    recharge_backoff_max: timedelta = timedelta(hours=24)
    # A pending attempt with no outcome after this long is resumed by the periodic job.
    recharge_stale_after: timedelta = timedelta(minutes=5)
    # Invoices for a month are issued this long after it ends, so late usage is included.
    invoice_grace: timedelta = timedelta(hours=72)
    seller: Seller = field(default_factory=Seller)
    # The tiers, so a payment or refund that moves an account to another tier says so
    # (`tier.changed`, SPEC 11).
    tiers: TierTable | None = None

    @property
    def stripe_enabled(self) -> bool:
        return bool(self.stripe_api_key)


def billing_config(settings: Settings) -> BillingConfig:
    return BillingConfig(
        stripe_api_key=settings.stripe_api_key,
        stripe_webhook_secret=settings.stripe_webhook_secret,
        stripe_api_base=settings.stripe_api_base,
        public_url=settings.resolved_public_url,
        topup_min=settings.topup_min,
        topup_max=settings.topup_max,
        recharge_max_per_hour=settings.auto_recharge_max_per_hour,
        recharge_backoff=timedelta(seconds=settings.auto_recharge_backoff_seconds),
        recharge_backoff_max=timedelta(seconds=settings.auto_recharge_backoff_max_seconds),
        invoice_grace=timedelta(hours=settings.invoice_grace_hours),
        seller=Seller(
            name=settings.seller_name,
            # One line per `|` or newline: environment variables are awkward with newlines.
            address=tuple(
                part.strip()
                for part in settings.seller_address.replace("|", "\n").splitlines()
                if part.strip()
            ),
            vat_id=settings.seller_vat_id,
            email=settings.seller_email,
        ),
    )
