"""Signing in: the one-time set-password link, email and password, signing out."""

from __future__ import annotations

import time
from typing import Any

from litestar import Request, Response, get, post
from litestar.datastructures import State
from litestar.response import Redirect

from app.console import operators
from app.console.render import flash, page
from app.console.session import HOME, LOGIN, SESSION_OPERATOR, SESSION_SINCE
from app.db.engine import unit_of_work
from app.errors import InvalidRequest


@get("/login")
async def login_page(request: Request[Any, Any, Any]) -> Response[Any]:
    if request.session.get(SESSION_OPERATOR):
        return Redirect(HOME, status_code=303)
    return page(request, "console_login.html", email=None, error=None)


@post("/login", status_code=200)
async def login(request: Request[Any, Any, Any], state: State) -> Response[Any]:
    form = await request.form()
    email = str(form.get("email") or "").strip()
    password = str(form.get("password") or "")
    client = request.client.host if request.client else "unknown"
    async with unit_of_work(state.sessionmaker) as db:
        result = await operators.sign_in(db, email, password, client)
    if result.operator is not None:
        request.set_session(
            {SESSION_OPERATOR: str(result.operator.id), SESSION_SINCE: int(time.time())}
        )
        return Redirect(HOME, status_code=303)
    if result.retry_after is not None:
        response = page(
            request,
            "console_login.html",
            status=429,
            email=email,
            error=f"Too many failed sign-ins. Try again in {result.retry_after} seconds.",
        )
        response.headers["retry-after"] = str(result.retry_after)
        return response
    return page(
        request,
        "console_login.html",
        status=401,
        email=email,
        error="That email and password do not match an operator.",
    )


@post("/logout", status_code=200)
async def logout(request: Request[Any, Any, Any]) -> Response[Any]:
    request.set_session({})
    flash(request, "You are signed out.")
    return Redirect(LOGIN, status_code=303)


@get("/set-password")
async def set_password_page(request: Request[Any, Any, Any], state: State) -> Response[Any]:
    token = request.query_params.get("token") or ""
    async with unit_of_work(state.sessionmaker) as db:
        operator = await operators.operator_of_link(db, token) if token else None
    return page(
        request,
        "console_set_password.html",
        status=200 if operator else 410,
        operator=operator,
        token=token,
        error=None,
    )


@post("/set-password", status_code=200)
async def set_password(request: Request[Any, Any, Any], state: State) -> Response[Any]:
    form = await request.form()
    token = str(form.get("token") or "")
    password = str(form.get("password") or "")
    try:
        async with unit_of_work(state.sessionmaker) as db:
            await operators.set_password(db, token, password)
    except InvalidRequest as exc:
        async with unit_of_work(state.sessionmaker) as db:
            operator = await operators.operator_of_link(db, token)
        return page(
            request,
            "console_set_password.html",
            status=400,
            operator=operator,
            token=token,
            error=exc.message,
        )
    flash(request, "Your password is set. Sign in with it.")
    return Redirect(LOGIN, status_code=303)
