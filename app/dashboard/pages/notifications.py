"""The account's notification settings (SPEC 9, 11): the email address, the low-balance
threshold and which emails are sent, and the recent notifications with what became of their
emails."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get, post
from litestar.datastructures import FormMultiDict, State
from litestar.di import NamedDependency
from litestar.response import Redirect
from sqlalchemy.ext.asyncio import AsyncSession

from app.accounts import service as accounts
from app.credits import service as credits
from app.dashboard import service
from app.dashboard.render import flash
from app.dashboard.service import NotificationForm
from app.dashboard.session import HOME, Viewer, viewer_page
from app.errors import TollgateError


def _form(form: FormMultiDict) -> NotificationForm:
    return NotificationForm(
        email=str(form.get("email") or ""),
        threshold=str(form.get("low_balance_threshold") or ""),
        emails_on=frozenset(str(kind) for kind in form.getall("emails", [])),
    )


async def _notifications_page(
    request: Request[Any, Any, Any],
    viewer: Viewer,
    db: AsyncSession,
    state: State,
    *,
    status: int = 200,
    error: str | None = None,
    error_field: str | None = None,
    draft: NotificationForm | None = None,
) -> Response[str]:
    account = await accounts.get_account(db, viewer.account_id)
    return viewer_page(
        request,
        viewer,
        "notifications.html",
        "notifications",
        status=status,
        account=account,
        form=draft or NotificationForm.of_account(account),
        kinds=service.email_kinds(),
        email_on=bool(state.settings.smtp_url),
        events=await service.notification_rows(db, account),
        error=error,
        error_field=error_field,
    )


@get("/notifications")
async def notifications_page(
    request: Request[Any, Any, Any],
    viewer: NamedDependency[Viewer],
    db: NamedDependency[AsyncSession],
    state: State,
) -> Response[str]:
    return await _notifications_page(request, viewer, db, state)


@post("/notifications", status_code=200)
async def save_notifications(
    request: Request[Any, Any, Any],
    viewer: NamedDependency[Viewer],
    db: NamedDependency[AsyncSession],
    state: State,
) -> Response[Any]:
    form = _form(await request.form())
    # Locked as every change of the account row is: a settlement moving the low-balance
    # state at the same moment waits, and then sees the new threshold.
    account = await credits.lock_account(db, viewer.account_id)
    try:
        await service.save_notifications(db, account, form)
    except TollgateError as exc:
        await db.rollback()
        return await _notifications_page(
            request,
            viewer,
            db,
            state,
            status=exc.status_code,
            error=exc.message,
            error_field=exc.param,
            draft=form,
        )
    flash(request, "Notification settings saved.")
    return Redirect(f"{HOME}/notifications", status_code=303)
