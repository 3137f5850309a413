"""The customer dashboard under `/dashboard` (SPEC 9): server-rendered pages that work without
JavaScript, signed in with an API key.

Every page checks its session's key on each request, so revoking that key (here or through
the admin API) ends the sessions signed in with it at once. Errors are friendly HTML pages,
never the API's JSON errors. The pages are in `pages/`, a module each; the session in
`session`.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

from litestar import Request, Response, Router, get
from litestar.datastructures import CacheControlHeader
from litestar.di import Provide
from litestar.exceptions import (
    HTTPException,
    NotFoundException,
    PermissionDeniedException,
)
from litestar.params import FromPath
from litestar.response import Redirect
from litestar.static_files import create_static_files_router

from app.dashboard.pages import billing, invoices, keys, notifications, signin, usage
from app.dashboard.render import STATIC_DIR, page
from app.dashboard.security import DashboardSecurity
from app.dashboard.session import HOME, LOGIN, SignInRequired, provide_viewer
from app.errors import NotFound, TollgateError
from app.middleware import request_id

logger = logging.getLogger(__name__)


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
        signin.login_page,
        signin.login,
        signin.logout,
        usage.overview,
        usage.usage,
        usage.usage_csv,
        billing.topup_page,
        billing.topup,
        billing.topup_return,
        billing.topup_status,
        billing.auto_recharge_page,
        billing.save_auto_recharge,
        invoices.invoice_list,
        invoices.invoice_page,
        invoices.invoice_pdf,
        keys.keys_page,
        keys.create_key,
        keys.change_key,
        keys.revoke_key,
        notifications.notifications_page,
        notifications.save_notifications,
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
