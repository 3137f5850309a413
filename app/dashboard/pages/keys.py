"""The account's API keys: list them with their spend this period, create one (shown once) with
its scope, spend limit, models and expiry, change those, revoke."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from litestar import Request, Response, get, post
from litestar.datastructures import FormMultiDict, State
from litestar.di import NamedDependency
from litestar.params import FromPath
from litestar.response import Redirect
from sqlalchemy.ext.asyncio import AsyncSession

from app.accounts import service as accounts
from app.credits.limits import LimitPeriod
from app.dashboard import service
from app.dashboard.render import flash
from app.dashboard.service import KeyForm
from app.dashboard.session import (
    HOME,
    LOGIN,
    Viewer,
    end_session,
    viewer_page,
)
from app.db.engine import unit_of_work
from app.errors import TollgateError
from app.pricing import Catalog

logger = logging.getLogger(__name__)


# ── API keys ────────────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True, slots=True)
class FailedChange:
    """A change form that was refused: shown open again, with what was typed and why."""

    key_id: uuid.UUID | None
    form: KeyForm
    error: str


def _form(form: FormMultiDict) -> KeyForm:
    def text(name: str, default: str = "") -> str:
        return str(form.get(name) or default)

    return KeyForm(
        name=text("name"),
        scope=text("scope", "full"),
        limit_amount=text("limit_amount"),
        limit_period=text("limit_period", "day"),
        limit_timezone=text("limit_timezone", "UTC"),
        models=tuple(str(m) for m in form.getall("models", [])),
        expires_at=text("expires_at"),
    )


async def _keys_page(
    request: Request[Any, Any, Any],
    viewer: Viewer,
    db: AsyncSession,
    catalog: Catalog,
    *,
    status: int = 200,
    new_key: str | None = None,
    error: str | None = None,
    draft: KeyForm | None = None,
    failed: FailedChange | None = None,
) -> Response[str]:
    now = datetime.now(UTC)
    account = await accounts.get_account(db, viewer.account_id)
    creator = await service.acting_key(db, viewer.account_id, viewer.key_id)
    rows = await service.key_rows(db, catalog, account, viewer.key_id, now)
    own = next((row for row in rows if row.current), None)
    return viewer_page(
        request,
        viewer,
        "keys.html",
        "keys",
        status=status,
        keys=rows,
        own=own,
        new_key=new_key,
        error=error,
        draft=draft or service.new_key_form(account, creator),
        failed=failed,
        choices=service.model_choices(catalog, now, creator),
        periods=[(p.value, service.LIMIT_WORDS[p][0]) for p in LimitPeriod],
        zones=service.time_zones(),
        limit_words=service.LIMIT_WORDS,
    )


@get("/keys")
async def keys_page(
    request: Request[Any, Any, Any],
    viewer: NamedDependency[Viewer],
    db: NamedDependency[AsyncSession],
    catalog: NamedDependency[Catalog],
) -> Response[str]:
    return await _keys_page(request, viewer, db, catalog)


@post("/keys", status_code=200)
async def create_key(
    request: Request[Any, Any, Any],
    viewer: NamedDependency[Viewer],
    db: NamedDependency[AsyncSession],
    catalog: NamedDependency[Catalog],
) -> Response[str]:
    form = _form(await request.form())
    now = datetime.now(UTC)
    try:
        creator = await service.acting_key(db, viewer.account_id, viewer.key_id)
        _, plaintext = await service.create_key(
            db, catalog, viewer.account_id, form, creator=creator, now=now
        )
    except TollgateError as exc:
        # Nothing of a refused key may be committed with the page.
        await db.rollback()
        return await _keys_page(
            request, viewer, db, catalog, status=exc.status_code, error=exc.message, draft=form
        )
    # Rendered in this response only (never stored, never redirected to): shown exactly once.
    return await _keys_page(request, viewer, db, catalog, new_key=plaintext)


@post("/keys/{key_id:str}", status_code=200)
async def change_key(
    request: Request[Any, Any, Any],
    key_id: FromPath[str],
    viewer: NamedDependency[Viewer],
    catalog: NamedDependency[Catalog],
    state: State,
) -> Response[Any]:
    form = _form(await request.form())
    now = datetime.now(UTC)
    try:
        # Its own unit of work: once committed, this instance's key cache forgets the key, so
        # its next request here has the new models and expiry (limits apply at once anyway:
        # the credit hold reads them).
        async with unit_of_work(state.sessionmaker) as db:
            creator = await service.acting_key(db, viewer.account_id, viewer.key_id)
            key = await service.update_key(
                db, catalog, viewer.account_id, key_id, form, creator=creator, now=now
            )
    except TollgateError as exc:
        if exc.status_code == 404:
            raise
        failed = FailedChange(_uuid(key_id), form, exc.message)
        async with unit_of_work(state.sessionmaker) as db:
            return await _keys_page(
                request, viewer, db, catalog, status=exc.status_code, failed=failed
            )
    state.authenticator.forget(key.key_hash)
    flash(request, f"Saved the changes to {key.prefix}….")
    return Redirect(f"{HOME}/keys", status_code=303)


def _uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


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
        end_session(request, f"You revoked {key.prefix}…, the key you signed in with.")
        return Redirect(LOGIN, status_code=303)
    flash(request, f"Revoked {key.prefix}…. It stops working within a second.")
    return Redirect(f"{HOME}/keys", status_code=303)
