"""The account's API keys: list, create (shown once), revoke."""

from __future__ import annotations

import logging
from typing import Any

from litestar import Request, Response, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath
from litestar.response import Redirect
from sqlalchemy.ext.asyncio import AsyncSession

from app.dashboard import service
from app.dashboard.render import flash
from app.dashboard.session import (
    HOME,
    LOGIN,
    Viewer,
    end_session,
    viewer_page,
)
from app.db.engine import unit_of_work
from app.errors import TollgateError

logger = logging.getLogger(__name__)


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
    return viewer_page(
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
        end_session(request, f"You revoked {key.prefix}…, the key you signed in with.")
        return Redirect(LOGIN, status_code=303)
    flash(request, f"Revoked {key.prefix}…. It stops working within a second.")
    return Redirect(f"{HOME}/keys", status_code=303)
