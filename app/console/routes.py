"""The operator console under `/console` (SPEC 12): server-rendered pages that work without
JavaScript, for operators signed in with email and password. Every page and action asks the
operator's role on the server (`Staff.require`); errors are readable pages."""

from __future__ import annotations

import logging
from typing import Any

from litestar import Request, Response, Router, get
from litestar.di import Provide
from litestar.exceptions import HTTPException, NotFoundException, PermissionDeniedException
from litestar.params import FromPath
from litestar.response import Redirect

from app.console.pages import accounts, audit, invoices, overview, pricing, signin, usage, webhooks
from app.console.render import page
from app.console.security import ConsoleSecurity
from app.console.session import LOGIN, SignInRequired, provide_staff
from app.errors import NotFound, TollgateError
from app.middleware import request_id

logger = logging.getLogger(__name__)


@get("/{path:path}")
async def unknown_page(path: FromPath[str]) -> Response[str]:
    raise NotFoundException(f"No console page at /console{path}")


def sign_in_redirect(request: Request[Any, Any, Any], _: Exception) -> Response[Any]:
    return Redirect(LOGIN, status_code=303)


def error_page(request: Request[Any, Any, Any], exc: Exception) -> Response[str]:
    status, title, message = 500, "Something went wrong", ""
    if isinstance(exc, PermissionDeniedException):
        status, title = 403, "This form has expired"
        message = "The form was missing its security token. Reload the page and try again."
    elif isinstance(exc, NotFoundException | NotFound):
        status, title, message = 404, "Not found", "There is nothing here."
    elif isinstance(exc, TollgateError) and exc.status_code < 500:
        status, title, message = exc.status_code, "That didn't work", exc.message
    elif isinstance(exc, HTTPException) and exc.status_code < 500:
        status, title, message = exc.status_code, "That didn't work", str(exc.detail)
    else:
        rid = request_id(request.scope)
        logger.exception("console error in %s %s (request %s)", request.method, request.url, rid)
        message = f"Please try again. The request id is {rid}."
    return page(request, "console_error.html", status=status, title=title, message=message)


console_router = Router(
    path="/console",
    route_handlers=[
        signin.login_page,
        signin.login,
        signin.logout,
        signin.set_password_page,
        signin.set_password,
        overview.overview,
        accounts.account_list,
        accounts.account_page,
        accounts.change_credit,
        accounts.suspend,
        accounts.unsuspend,
        accounts.revoke_key,
        accounts.set_key_limit,
        usage.usage_page,
        usage.usage_csv,
        invoices.invoice_list,
        invoices.invoice_page,
        invoices.invoice_pdf,
        invoices.run_period,
        pricing.pricing_page,
        webhooks.webhooks_page,
        webhooks.endpoint_page,
        webhooks.create_endpoint,
        webhooks.delete_endpoint,
        webhooks.retry_delivery,
        audit.audit_page,
        audit.operators_page,
        audit.create_operator,
        audit.disable_operator,
        unknown_page,
    ],
    middleware=[ConsoleSecurity],
    dependencies={"staff": Provide(provide_staff)},
    exception_handlers={SignInRequired: sign_in_redirect, Exception: error_page},
    include_in_schema=False,
)
