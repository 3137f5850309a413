"""Billing routes: top-up through Stripe Checkout (SPEC 3.5), auto-recharge settings, and the
Stripe webhook (SPEC 4)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from litestar import Request, Response, get, post
from litestar.background_tasks import BackgroundTask
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import JSONBody
from sqlalchemy.ext.asyncio import AsyncSession

from app.accounts import service as accounts
from app.accounts.auth import Principal
from app.errors import InvalidRequest, ServiceUnavailable
from app.money import parse_money
from app.payments import checkout, inbox, repository, service
from app.payments.runtime import auto_recharger, billing, require_stripe
from app.payments.schemas import AutoRechargeRequest, CheckoutRequest, auto_recharge_view


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
    event = service.verify_event(
        await request.body(),
        request.headers.get("stripe-signature"),
        config.stripe_webhook_secret,
        config.webhook_tolerance_seconds,
    )
    receipt = await inbox.receive_event(state.sessionmaker, event, config)
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
    config = billing(state)
    account = await accounts.get_account(db, principal.account_id)
    existing = await repository.get_recharge_setting(db, account.id)
    threshold = _threshold(data.threshold, existing.threshold if existing else None)
    amount: Decimal | None = existing.amount if existing else None
    if data.amount is not None:
        amount = service.parse_topup_amount(data.amount, currency=account.currency, config=config)
    if data.enabled:
        require_stripe(state)
        if threshold is None or amount is None:
            missing = "threshold" if threshold is None else "amount"
            raise InvalidRequest(
                f"Missing required field: {missing} (needed to enable auto-recharge)",
                param=missing,
                code="missing_field",
            )
        customer = await repository.get_customer(db, account.id)
        if customer is None or customer.payment_method_id is None:
            raise InvalidRequest(
                "No saved card: top up once through Checkout first, then enable auto-recharge.",
                param="enabled",
                code="payment_method_required",
            )
    await repository.upsert_recharge_setting(
        db,
        account_id=account.id,
        enabled=data.enabled,
        threshold=threshold if threshold is not None else Decimal(0),
        amount=amount if amount is not None else config.topup_min,
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
    account = await accounts.get_account(db, principal.account_id)
    return auto_recharge_view(
        await repository.get_recharge_setting(db, account.id),
        await repository.get_customer(db, account.id),
        await repository.latest_attempt(db, account.id),
        account.currency,
    )


def _threshold(value: str | int | None, saved: Decimal | None) -> Decimal | None:
    if value is None:
        return saved
    try:
        threshold = parse_money(value, field="threshold")
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="threshold") from exc
    if threshold < 0:
        raise InvalidRequest("threshold must not be negative", param="threshold")
    return threshold


payment_routes = [create_checkout, stripe_webhook, get_auto_recharge, set_auto_recharge]
