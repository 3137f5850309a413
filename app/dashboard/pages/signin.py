"""Signing in with an API key, and out."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

from litestar import Request, Response, get, post
from litestar.datastructures import State
from litestar.response import Redirect

from app.accounts.auth import KeyAuthenticator
from app.accounts.keys import KeyScope
from app.dashboard import repository
from app.dashboard.render import page
from app.dashboard.session import (
    HOME,
    LOGIN,
    SESSION_ACCOUNT,
    SESSION_KEY,
    SESSION_SINCE,
    end_session,
    refusal,
    safe_next,
)
from app.db.engine import unit_of_work
from app.errors import InvalidApiKey

logger = logging.getLogger(__name__)


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
    return _login_page(request, state, target=safe_next(request.query_params.get("next")))


INVALID_KEY = (
    "That API key isn't valid. Check that you pasted all of it (keys start with tg-); an "
    "expired or revoked key no longer works."
)
API_ONLY = (
    "This key has scope inference: it works for the API only. Sign in with a key whose scope "
    "is full."
)


@post("/login", status_code=200)
async def login(request: Request[Any, Any, Any], state: State) -> Response[Any]:
    form = await request.form()
    key = str(form.get("api_key") or "").strip()
    target = safe_next(form.get("next"))
    status, error = 400, "Enter your API key."
    if key:
        authenticator: KeyAuthenticator = state.authenticator
        try:
            principal = await authenticator.authenticate(f"Bearer {key}")
            # The authenticator may remember a key for up to a second; a sign-in is rare
            # enough to ask the database whether it was revoked or narrowed just now.
            async with unit_of_work(state.sessionmaker) as db:
                found = await repository.session_key(db, principal.api_key_id, principal.account_id)
            if found is None or found.revoked:
                raise InvalidApiKey("revoked")
        except InvalidApiKey:
            status, error = 401, INVALID_KEY
        else:
            if principal.scope is not KeyScope.FULL or found.scope != KeyScope.FULL:
                status, error = 403, API_ONLY
            elif refusal(found, datetime.now(UTC)) is not None:
                status, error = 401, INVALID_KEY
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
    return _login_page(request, state, target=target, status=status, error=error)


@post("/logout", status_code=200)
async def logout(request: Request[Any, Any, Any]) -> Response[Any]:
    end_session(request, "You are signed out.")
    return Redirect(LOGIN, status_code=303)
