"""Who is signed in to the dashboard: the session's account and key, checked on every page
(so revoking the key, its expiry or narrowing it to `inference` ends its sessions at once), and
the helpers every page shares."""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from litestar import Request, Response
from litestar.datastructures import State

from app.accounts.keys import KeyScope
from app.dashboard import repository
from app.dashboard.render import flash, page
from app.dashboard.repository import SessionKey
from app.db.engine import unit_of_work

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
        end_session(request, "Your session expired. Please sign in again.")
        raise SignInRequired
    # Its own short transaction: a page that calls Stripe must not hold one open meanwhile.
    async with unit_of_work(state.sessionmaker) as db:
        key = await repository.session_key(db, key_id, account_id)
    reason = refusal(key, datetime.now(UTC))
    if key is None or reason is not None:
        end_session(request, f"The API key you signed in with {reason}. Sign in with another.")
        raise SignInRequired
    return Viewer(account_id, key_id, key.account_name, key.currency)


def refusal(key: SessionKey | None, now: datetime) -> str | None:
    """Why a key may not hold a dashboard session (SPEC 3.6: only an active `full` key), as the
    end of a sentence about it; None when it may."""
    if key is None or key.revoked:
        return "was revoked"
    if key.expires_at is not None and key.expires_at <= now:
        return f"expired at {key.expires_at.astimezone(UTC):%Y-%m-%d %H:%M} UTC"
    if key.scope != KeyScope.FULL:
        return f"has scope {key.scope}: it works for the API only"
    return None


def end_session(request: Request[Any, Any, Any], message: str) -> None:
    request.set_session({})
    flash(request, message)


def safe_next(target: str | None) -> str:
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


def viewer_page(
    request: Request[Any, Any, Any], viewer: Viewer, template: str, nav: str, **context: Any
) -> Response[str]:
    return page(request, template, viewer=viewer, nav=nav, **context)
