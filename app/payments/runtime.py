"""The payments domain's run-time objects, kept on the app's state and made on first use, so
routes work whatever the lifespan wires: the billing settings, the Stripe client (None when
Stripe is not configured) and the auto-recharger."""

from __future__ import annotations

import dataclasses

from litestar.datastructures import State

from app.errors import ServiceUnavailable
from app.payments.auto_recharge import AutoRecharger
from app.payments.config import BillingConfig, billing_config
from app.payments.stripe_api import StripeGateway


def billing(state: State) -> BillingConfig:
    config: BillingConfig | None = state.get("billing_config")
    if config is None:
        config = dataclasses.replace(billing_config(state.settings), tiers=state.get("tiers"))
        state.billing_config = config
    return config


def optional_stripe(state: State) -> StripeGateway | None:
    config = billing(state)
    if not config.stripe_enabled:
        return None
    gateway: StripeGateway | None = state.get("stripe_gateway")
    if gateway is None:
        assert config.stripe_api_key is not None
        gateway = StripeGateway(config.stripe_api_key, api_base=config.stripe_api_base)
        state.stripe_gateway = gateway
    return gateway


def require_stripe(state: State) -> StripeGateway:
    gateway = optional_stripe(state)
    if gateway is None:
        raise ServiceUnavailable(
            "Top-up is disabled on this gateway: STRIPE_API_KEY is not set.",
            code="payments_not_configured",
        )
    return gateway


def auto_recharger(state: State) -> AutoRecharger:
    recharger: AutoRecharger | None = state.get("auto_recharger")
    if recharger is None:
        recharger = AutoRecharger(state.sessionmaker, optional_stripe(state), billing(state))
        state.auto_recharger = recharger
    return recharger


async def shutdown(state: State) -> None:
    """Lifespan exit: let background recharge checks finish, close the Stripe client."""
    recharger: AutoRecharger | None = state.get("auto_recharger")
    if recharger is not None:
        await recharger.close()
    gateway: StripeGateway | None = state.get("stripe_gateway")
    if gateway is not None:
        await gateway.close()
        del state["stripe_gateway"]
