"""Top-up through Stripe Checkout and its return page, and the auto-recharge settings."""

from __future__ import annotations

import logging
import secrets
from typing import Any
from urllib.parse import quote

from litestar import Request, Response, get, post
from litestar.background_tasks import BackgroundTask
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.response import Redirect
from sqlalchemy.ext.asyncio import AsyncSession

from app.accounts import service as accounts
from app.dashboard import service
from app.dashboard.render import flash
from app.dashboard.session import (
    HOME,
    Viewer,
    viewer_page,
)
from app.errors import TollgateError
from app.money import money_str
from app.payments import checkout, recharge
from app.payments.runtime import auto_recharger, billing, optional_stripe, require_stripe

logger = logging.getLogger(__name__)


# ── top-up ──────────────────────────────────────────────────────────────────────────────────


async def _topup_page(
    request: Request[Any, Any, Any],
    viewer: Viewer,
    db: AsyncSession,
    state: State,
    *,
    status: int = 200,
    error: str | None = None,
    amount: str = "",
) -> Response[str]:
    config = billing(state)
    account = await accounts.get_account(db, viewer.account_id)
    return viewer_page(
        request,
        viewer,
        "topup.html",
        "topup",
        status=status,
        account=account,
        enabled=config.stripe_enabled,
        presets=service.topup_presets(config),
        minimum=config.topup_min,
        maximum=config.topup_max,
        canceled=request.query_params.get("canceled") == "1",
        error=error,
        amount=amount,
        # Sent back with the form: a double submit returns the same Checkout Session.
        attempt=secrets.token_urlsafe(12),
    )


@get("/topup")
async def topup_page(
    request: Request[Any, Any, Any],
    viewer: NamedDependency[Viewer],
    db: NamedDependency[AsyncSession],
    state: State,
) -> Response[str]:
    return await _topup_page(request, viewer, db, state)


@post("/topup", status_code=200)
async def topup(
    request: Request[Any, Any, Any],
    viewer: NamedDependency[Viewer],
    db: NamedDependency[AsyncSession],
    state: State,
) -> Response[Any]:
    form = await request.form()
    amount = service.clean_amount(str(form.get("amount") or ""))
    attempt = str(form.get("attempt") or "")[:64]
    try:
        session = await checkout.create_checkout(
            state.sessionmaker,
            require_stripe(state),
            billing(state),
            account_id=viewer.account_id,
            amount=amount,
            client_key=f"dashboard:{attempt}:{amount}" if attempt else None,
        )
    except TollgateError as exc:
        return await _topup_page(
            request, viewer, db, state, status=exc.status_code, error=exc.message, amount=amount
        )
    return Redirect(session.url, status_code=303)


@get("/topup/return")
async def topup_return(
    request: Request[Any, Any, Any],
    viewer: NamedDependency[Viewer],
    db: NamedDependency[AsyncSession],
) -> Response[Any]:
    session_id = request.query_params.get("session_id", "")
    if not session_id:
        return Redirect(f"{HOME}/topup", status_code=303)
    account = await accounts.get_account(db, viewer.account_id)
    credited = await checkout.checkout_credited(db, viewer.account_id, session_id)
    return viewer_page(
        request,
        viewer,
        "topup_return.html",
        "topup",
        account=account,
        credited=credited,
        status_url=f"{HOME}/topup/status?session_id={quote(session_id)}",
    )


@get("/topup/status")
async def topup_status(
    request: Request[Any, Any, Any],
    viewer: NamedDependency[Viewer],
    db: NamedDependency[AsyncSession],
) -> dict[str, Any]:
    """For the return page's script: has the payment been credited, and the balance now."""
    session_id = request.query_params.get("session_id", "")
    account = await accounts.get_account(db, viewer.account_id)
    credited = bool(session_id) and await checkout.checkout_credited(
        db, viewer.account_id, session_id
    )
    return {
        "credited": credited,
        "balance": money_str(account.balance),
        "available": money_str(account.balance - account.held),
        "currency": account.currency,
    }


# ── auto-recharge ───────────────────────────────────────────────────────────────────────────


async def _auto_recharge_page(
    request: Request[Any, Any, Any],
    viewer: Viewer,
    db: AsyncSession,
    state: State,
    *,
    status: int = 200,
    error: str | None = None,
) -> Response[str]:
    config = billing(state)
    account = await accounts.get_account(db, viewer.account_id)
    return viewer_page(
        request,
        viewer,
        "auto_recharge.html",
        "auto_recharge",
        status=status,
        account=account,
        setting=await recharge.auto_recharge(db, account),
        enabled=config.stripe_enabled,
        minimum=config.topup_min,
        maximum=config.topup_max,
        error=error,
    )


@get("/auto-recharge")
async def auto_recharge_page(
    request: Request[Any, Any, Any],
    viewer: NamedDependency[Viewer],
    db: NamedDependency[AsyncSession],
    state: State,
) -> Response[str]:
    return await _auto_recharge_page(request, viewer, db, state)


@post("/auto-recharge", status_code=200)
async def save_auto_recharge(
    request: Request[Any, Any, Any],
    viewer: NamedDependency[Viewer],
    db: NamedDependency[AsyncSession],
    state: State,
) -> Response[Any]:
    form = await request.form()
    enabled = form.get("enabled") == "on"
    account = await accounts.get_account(db, viewer.account_id)
    try:
        await service.save_auto_recharge(
            db,
            billing(state),
            account,
            enabled=enabled,
            threshold=str(form.get("threshold") or ""),
            amount=str(form.get("amount") or ""),
        )
    except TollgateError as exc:
        await db.rollback()
        return await _auto_recharge_page(
            request, viewer, db, state, status=exc.status_code, error=exc.message
        )
    flash(request, "Auto-recharge is on." if enabled else "Auto-recharge settings saved.")
    # After the commit: a balance already below the new threshold is recharged right away.
    background = (
        BackgroundTask(auto_recharger(state).maybe_recharge_logged, account.id)
        if enabled and optional_stripe(state) is not None
        else None
    )
    return Redirect(f"{HOME}/auto-recharge", status_code=303, background=background)
