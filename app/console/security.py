"""The console's session cookie, CSRF protection and security headers: the dashboard's
mechanisms (app/dashboard/security.py) with their own cookie names, path and keys, so a
dashboard session opens nothing here and a console session nothing there."""

from __future__ import annotations

from litestar.config.csrf import CSRFConfig
from litestar.datastructures import MutableScopeHeaders
from litestar.enums import ScopeType
from litestar.middleware.base import MiddlewareProtocol
from litestar.middleware.csrf import CSRFMiddleware
from litestar.middleware.session.base import SessionMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from app.config import Settings
from app.dashboard.security import (
    SECURITY_HEADERS,
    SignedCookieBackend,
    SignedCookieConfig,
    master_key,
    subkey,
)

COOKIE_PATH = "/console"
SESSION_COOKIE = "tollgate_console"
CSRF_COOKIE = "tollgate_console_csrf"
SESSION_HOURS = 8  # a working day; an operator signs in again after it


def build_stack(app: ASGIApp, settings: Settings) -> ASGIApp:
    key = master_key(settings)
    secure = settings.resolved_public_url.startswith("https://")
    protected = CSRFMiddleware(
        app=app,
        config=CSRFConfig(
            secret=subkey(key, "console-csrf").hex(),
            cookie_name=CSRF_COOKIE,
            cookie_path=COOKIE_PATH,
            cookie_secure=secure,
            cookie_httponly=True,
            cookie_samesite="strict",
            header_name="x-csrf-token",
        ),
    )
    backend = SignedCookieBackend(
        SignedCookieConfig(
            secret=subkey(key, "console-session"),
            max_age=SESSION_HOURS * 3600,
            key=SESSION_COOKIE,
            path=COOKIE_PATH,
            secure=secure,
            samesite="strict",
        )
    )
    return SessionMiddleware(app=protected, backend=backend)


class ConsoleSecurity(MiddlewareProtocol):
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._stack: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        if self._stack is None:
            self._stack = build_stack(self.app, scope["litestar_app"].state.settings)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableScopeHeaders.from_message(message)
                for name, value in SECURITY_HEADERS.items():
                    if name not in headers:
                        headers[name] = value
            await send(message)

        await self._stack(scope, receive, send_with_headers)
