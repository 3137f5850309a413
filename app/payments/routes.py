"""Billing routes: top-up through Stripe Checkout (SPEC 3.5), auto-recharge settings, and the
Stripe webhook (SPEC 4)."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get, post
from litestar.background_tasks import BackgroundTask
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import JSONBody
from sqlalchemy.ext.asyncio import AsyncSession

from app.accounts import service as accounts
from app.accounts.auth import Principal
from app.errors import ServiceUnavailable
from app.payments import checkout, events, inbox, recharge, webhook
from app.payments.runtime import auto_recharger, billing, require_stripe
from app.payments.schemas import AutoRechargeRequest, CheckoutRequest


@post("/v1/billing/checkout", status_code=200)
async def create_checkout(
    principal: NamedDependency[Principal],
    data: JSONBody[CheckoutRequest],
    request: Request[Any, Any, Any],
    state: State,
) -> dict[str, str]:
    """`{"amount": "20.00"}` → `{"id", "url"}` of a Stripe Checkout Session. An optional
    `Idempotency-Key` header makes a retried request return the same session."""
    session = await checkout.create_checkout(
        state.sessionmaker,
        require_stripe(state),
        billing(state),
        account_id=principal.account_id,
        amount=data.amount,
        client_key=request.headers.get("idempotency-key"),
    )
    return {"id": session.id, "url": session.url}


@post("/webhooks/stripe", status_code=200, include_in_schema=False)
async def stripe_webhook(request: Request[Any, Any, Any], state: State) -> dict[str, Any]:
    config = billing(state)
    if not config.stripe_webhook_secret:
        raise ServiceUnavailable(
            "Stripe webhooks are disabled on this gateway: STRIPE_WEBHOOK_SECRET is not set.",
            code="payments_not_configured",
        )
    # The signature covers the exact bytes Stripe sent: verify them before any parsing.
    body = await request.body()
    webhook.verify_signature(
        body,
        request.headers.get("stripe-signature"),
        config.stripe_webhook_secret,
        config.webhook_tolerance_seconds,
    )
    receipt = await inbox.receive_event(state.sessionmaker, events.read_event(body), config)
    return {
        "received": True,
        "id": receipt.event_id,
        "duplicate": receipt.duplicate,
        "outcome": receipt.outcome,
    }


@get("/v1/billing/auto_recharge")
async def get_auto_recharge(
    principal: NamedDependency[Principal], db: NamedDependency[AsyncSession]
) -> dict[str, Any]:
    return await _view(db, principal)


@post("/v1/billing/auto_recharge", status_code=200)
async def set_auto_recharge(
    principal: NamedDependency[Principal],
    data: JSONBody[AutoRechargeRequest],
    db: NamedDependency[AsyncSession],
    state: State,
) -> Response[dict[str, Any]]:
    """`{"enabled": true, "threshold": "10.00", "amount": "50.00"}`: when the balance falls
    below `threshold`, charge `amount` to the card saved by the last Checkout top-up."""
    account = await accounts.get_account(db, principal.account_id)
    await recharge.save_auto_recharge(
        db,
        account,
        billing(state),
        enabled=data.enabled,
        threshold=data.threshold,
        amount=data.amount,
    )
    view = await _view(db, principal)
    # After the response, so after the commit: a balance already below the new threshold is
    # recharged at once rather than at the next request.
    background = (
        BackgroundTask(auto_recharger(state).maybe_recharge_logged, account.id)
        if data.enabled
        else None
    )
    return Response(view, status_code=200, background=background)


async def _view(db: AsyncSession, principal: Principal) -> dict[str, Any]:
    return await recharge.auto_recharge(db, await accounts.get_account(db, principal.account_id))


payment_routes = [create_checkout, stripe_webhook, get_auto_recharge, set_auto_recharge]
