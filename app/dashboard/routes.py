"""The customer dashboard under `/dashboard` (SPEC 9): server-rendered pages that work without
JavaScript, signed in with an API key.

Every page checks its session's key on each request, so revoking that key (here or through
the admin API) ends the sessions signed in with it at once. Errors are friendly HTML pages,
never the API's JSON errors.
"""

from __future__ import annotations

import csv
import io
import logging
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from litestar import Request, Response, Router, get, post
from litestar.background_tasks import BackgroundTask
from litestar.datastructures import CacheControlHeader, State
from litestar.di import NamedDependency, Provide
from litestar.exceptions import (
    HTTPException,
    NotFoundException,
    PermissionDeniedException,
    ValidationException,
)
from litestar.params import FromPath
from litestar.response import Redirect
from litestar.static_files import create_static_files_router
from sqlalchemy.ext.asyncio import AsyncSession

from app.accounts import service as accounts
from app.accounts.auth import KeyAuthenticator
from app.dashboard import repository, service
from app.dashboard.render import STATIC_DIR, flash, page
from app.dashboard.security import DashboardSecurity
from app.db.engine import unit_of_work
from app.errors import InvalidApiKey, NotFound, TollgateError
from app.invoices import repository as invoices_repository
from app.invoices import service as invoices
from app.middleware import request_id
from app.money import money_str
from app.payments import checkout, recharge
from app.payments.runtime import auto_recharger, billing, optional_stripe, require_stripe
from app.pricing import Catalog

logger = logging.getLogger(__name__)

HOME = "/dashboard"
LOGIN = "/dashboard/login"
SESSION_ACCOUNT, SESSION_KEY, SESSION_SINCE = "a", "k", "t"


# ── who is signed in ────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True, slots=True)
class Viewer:
    account_id: uuid.UUID
    key_id: uuid.UUID
    name: str
    currency: str


class SignInRequired(Exception):
    """Raised by any page whose visitor has no valid session."""


async def provide_viewer(request: Request[Any, Any, Any], state: State) -> Viewer:
    session = request.session
    try:
        account_id = uuid.UUID(session[SESSION_ACCOUNT])
        key_id = uuid.UUID(session[SESSION_KEY])
        since = float(session[SESSION_SINCE])
    except (KeyError, TypeError, ValueError):
        raise SignInRequired from None
    if time.time() - since > state.settings.session_hours * 3600:
        _end_session(request, "Your session expired. Please sign in again.")
        raise SignInRequired
    # Its own short transaction: a page that calls Stripe must not hold one open meanwhile.
    async with state.sessionmaker() as db:
        found = await repository.active_account(db, key_id, account_id)
    if found is None:
        _end_session(request, "The API key you signed in with was revoked. Sign in with another.")
        raise SignInRequired
    name, currency = found
    return Viewer(account_id, key_id, name, currency)


def _end_session(request: Request[Any, Any, Any], message: str) -> None:
    request.set_session({})
    flash(request, message)


def _safe_next(target: str | None) -> str:
    """Only a dashboard page of this site: never an open redirect."""
    if (
        target
        and (target == HOME or target.startswith((f"{HOME}/", f"{HOME}?")))
        and not target.startswith(("//", LOGIN, f"{HOME}/logout"))
        and "\\" not in target
        and all(c.isprintable() for c in target)
    ):
        return target
    return HOME


def _page(
    request: Request[Any, Any, Any], viewer: Viewer, template: str, nav: str, **context: Any
) -> Response[str]:
    return page(request, template, viewer=viewer, nav=nav, **context)


# ── sign in and out ─────────────────────────────────────────────────────────────────────────


def _login_page(
    request: Request[Any, Any, Any],
    state: State,
    *,
    target: str,
    status: int = 200,
    error: str | None = None,
) -> Response[str]:
    hours = state.settings.session_hours
    return page(
        request,
        "login.html",
        status=status,
        error=error,
        next=target,
        session_hours=f"{hours:g}",
    )


@get("/login")
async def login_page(request: Request[Any, Any, Any], state: State) -> Response[Any]:
    if request.session.get(SESSION_KEY):
        return Redirect(HOME, status_code=303)
    return _login_page(request, state, target=_safe_next(request.query_params.get("next")))


@post("/login", status_code=200)
async def login(request: Request[Any, Any, Any], state: State) -> Response[Any]:
    form = await request.form()
    key = str(form.get("api_key") or "").strip()
    target = _safe_next(form.get("next"))
    if not key:
        error = "Enter your API key."
    else:
        authenticator: KeyAuthenticator = state.authenticator
        try:
            principal = await authenticator.authenticate(f"Bearer {key}")
            # The authenticator may remember a key for up to a second; a sign-in is rare
            # enough to ask the database whether it was revoked just now.
            async with state.sessionmaker() as db:
                if not await repository.active_account(
                    db, principal.api_key_id, principal.account_id
                ):
                    raise InvalidApiKey("revoked")
        except InvalidApiKey:
            error = (
                "That API key isn't valid. Check that you pasted all of it (keys start with "
                "tg-); a revoked key no longer works."
            )
        else:
            # A new session replaces whatever the browser had (no fixation).
            request.set_session(
                {
                    SESSION_ACCOUNT: str(principal.account_id),
                    SESSION_KEY: str(principal.api_key_id),
                    SESSION_SINCE: int(time.time()),
                }
            )
            return Redirect(target, status_code=303)
    return _login_page(request, state, target=target, status=401 if key else 400, error=error)


@post("/logout", status_code=200)
async def logout(request: Request[Any, Any, Any]) -> Response[Any]:
    _end_session(request, "You are signed out.")
    return Redirect(LOGIN, status_code=303)


# ── overview and usage ──────────────────────────────────────────────────────────────────────


@get("/")
async def overview(
    request: Request[Any, Any, Any],
    viewer: NamedDependency[Viewer],
    db: NamedDependency[AsyncSession],
    catalog: NamedDependency[Catalog],
    state: State,
) -> Response[str]:
    data = await service.overview(
        db,
        account_id=viewer.account_id,
        tiers=state.tiers,
        catalog=catalog,
        now=datetime.now(UTC),
    )
    return _page(request, viewer, "overview.html", "overview", o=data)


@get("/usage")
async def usage(
    request: Request[Any, Any, Any],
    viewer: NamedDependency[Viewer],
    db: NamedDependency[AsyncSession],
    catalog: NamedDependency[Catalog],
) -> Response[str]:
    now = datetime.now(UTC)
    error = None
    try:
        month = service.parse_month(request.query_params.get("month"), now.date())
    except ValueError as exc:
        error, month = str(exc), now.date().replace(day=1)
    data = await service.month_usage(db, catalog, viewer.account_id, month, now)
    return _page(
        request,
        viewer,
        "usage.html",
        "usage",
        u=data,
        error=error,
        previous=service.previous_month(month),
        following=service.next_month(month),
        current_month=now.date().replace(day=1),
    )


@get("/usage.csv")
async def usage_csv(
    request: Request[Any, Any, Any],
    viewer: NamedDependency[Viewer],
    db: NamedDependency[AsyncSession],
    catalog: NamedDependency[Catalog],
) -> Response[str]:
    now = datetime.now(UTC)
    try:
        month = service.parse_month(request.query_params.get("month"), now.date())
    except ValueError as exc:
        raise ValidationException(str(exc)) from None
    data = await service.month_usage(db, catalog, viewer.account_id, month, now)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(service.CSV_COLUMNS)
    writer.writerows(service.csv_records(data.rows))
    name = f"tollgate-usage-{month:%Y-%m}.csv"
    return Response(
        out.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={"content-disposition": f'attachment; filename="{name}"'},
    )


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
    return _page(
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
    return _page(
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
    return _page(
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


# ── invoices ────────────────────────────────────────────────────────────────────────────────


@get("/invoices")
async def invoice_list(
    request: Request[Any, Any, Any],
    viewer: NamedDependency[Viewer],
    db: NamedDependency[AsyncSession],
) -> Response[str]:
    found = await invoices_repository.list_invoices(db, viewer.account_id)
    return _page(request, viewer, "invoices.html", "invoices", invoices=found)


@get("/invoices/{invoice_id:str}")
async def invoice_page(
    request: Request[Any, Any, Any],
    invoice_id: FromPath[str],
    viewer: NamedDependency[Viewer],
    db: NamedDependency[AsyncSession],
) -> Response[str]:
    invoice = await invoices.get_invoice(db, viewer.account_id, invoice_id)
    lines = await invoices_repository.lines_of(db, [invoice])
    return _page(
        request,
        viewer,
        "invoice.html",
        "invoices",
        invoice=invoice,
        lines=lines.get((invoice.account_id, invoice.id), []),
    )


@get("/invoices/{invoice_id:str}/pdf")
async def invoice_pdf(
    invoice_id: FromPath[str],
    viewer: NamedDependency[Viewer],
    db: NamedDependency[AsyncSession],
) -> Response[bytes]:
    invoice, content = await invoices.invoice_pdf(db, viewer.account_id, invoice_id)
    return Response(
        content,
        media_type="application/pdf",
        headers={"content-disposition": f'attachment; filename="{invoice.number}.pdf"'},
    )


# ── API keys ────────────────────────────────────────────────────────────────────────────────


async def _keys_page(
    request: Request[Any, Any, Any],
    viewer: Viewer,
    db: AsyncSession,
    *,
    status: int = 200,
    new_key: str | None = None,
    error: str | None = None,
) -> Response[str]:
    rows = await service.key_rows(db, viewer.account_id, viewer.key_id)
    return _page(
        request,
        viewer,
        "keys.html",
        "keys",
        status=status,
        keys=rows,
        new_key=new_key,
        error=error,
    )


@get("/keys")
async def keys_page(
    request: Request[Any, Any, Any],
    viewer: NamedDependency[Viewer],
    db: NamedDependency[AsyncSession],
) -> Response[str]:
    return await _keys_page(request, viewer, db)


@post("/keys", status_code=200)
async def create_key(
    request: Request[Any, Any, Any],
    viewer: NamedDependency[Viewer],
    db: NamedDependency[AsyncSession],
) -> Response[str]:
    form = await request.form()
    try:
        _, plaintext = await service.create_key(db, viewer.account_id, str(form.get("name") or ""))
    except TollgateError as exc:
        return await _keys_page(request, viewer, db, status=exc.status_code, error=exc.message)
    # Rendered in this response only (never stored, never redirected to): shown exactly once.
    return await _keys_page(request, viewer, db, new_key=plaintext)


@post("/keys/{key_id:str}/revoke", status_code=200)
async def revoke_key(
    request: Request[Any, Any, Any],
    key_id: FromPath[str],
    viewer: NamedDependency[Viewer],
    state: State,
) -> Response[Any]:
    # Its own unit of work: once the revocation has committed, this instance's key cache
    # forgets the key, so its next API request here is a 401.
    async with unit_of_work(state.sessionmaker) as db:
        key = await service.revoke_key(db, viewer.account_id, key_id)
    state.authenticator.forget(key.key_hash)
    if key.id == viewer.key_id:
        _end_session(request, f"You revoked {key.prefix}…, the key you signed in with.")
        return Redirect(LOGIN, status_code=303)
    flash(request, f"Revoked {key.prefix}…. It stops working within a second.")
    return Redirect(f"{HOME}/keys", status_code=303)


# ── everything else ─────────────────────────────────────────────────────────────────────────


@get("/{path:path}")
async def unknown_page(path: FromPath[str]) -> Response[str]:
    raise NotFoundException(f"No dashboard page at /dashboard{path}")


def sign_in_redirect(request: Request[Any, Any, Any], _: Exception) -> Response[Any]:
    if request.url.path == f"{HOME}/topup/status":
        return Response({"signed_in": False}, status_code=401)
    target = LOGIN
    if request.method == "GET" and request.url.path != HOME:
        here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        target += f"?next={quote(here, safe='')}"
    return Redirect(target, status_code=303)


def error_page(request: Request[Any, Any, Any], exc: Exception) -> Response[str]:
    """Every other failure as a readable page with the status it deserves."""
    status, title, message = 500, "Something went wrong", ""
    if isinstance(exc, PermissionDeniedException):
        status, title = 403, "This form has expired"
        message = (
            "The form was missing its security token, or it came from another site. "
            "Go back, reload the page and try again."
        )
    elif isinstance(exc, NotFoundException | NotFound):
        status, title = 404, "Page not found"
        message = "There is nothing here. It may have moved, or the link is incomplete."
    elif isinstance(exc, TollgateError) and exc.status_code < 500:
        status, title, message = exc.status_code, "That didn't work", exc.message
    elif isinstance(exc, HTTPException) and exc.status_code < 500:
        status, title, message = exc.status_code, "That didn't work", str(exc.detail)
    else:
        rid = request_id(request.scope)
        logger.exception("dashboard error in %s %s (request %s)", request.method, request.url, rid)
        message = f"Please try again. If it keeps happening, contact support with the id {rid}."
    return page(request, "error.html", status=status, title=title, message=message)


pages = Router(
    path="/",
    route_handlers=[
        login_page,
        login,
        logout,
        overview,
        usage,
        usage_csv,
        topup_page,
        topup,
        topup_return,
        topup_status,
        auto_recharge_page,
        save_auto_recharge,
        invoice_list,
        invoice_page,
        invoice_pdf,
        keys_page,
        create_key,
        revoke_key,
        unknown_page,
    ],
    middleware=[DashboardSecurity],
    dependencies={"viewer": Provide(provide_viewer)},
    exception_handlers={SignInRequired: sign_in_redirect, Exception: error_page},
)

dashboard_router = Router(
    path=HOME,
    route_handlers=[
        pages,
        # Outside the session and CSRF middleware: a stylesheet needs neither.
        create_static_files_router(
            path="/static",
            directories=[STATIC_DIR],
            cache_control=CacheControlHeader(max_age=86400, public=True),
            include_in_schema=False,
        ),
    ],
    include_in_schema=False,
)
