"""Dashboard sessions, CSRF protection and security headers, scoped to the dashboard's router so
the API, admin, webhook, health and metrics routes never see any of them.

The session is a signed cookie (HMAC-SHA256 over its JSON and an expiry time) plugged into
Litestar's session middleware: it holds only ids and times, which need integrity but not
secrecy, and needs no shared store when several instances serve the dashboard. Forms are
protected by Litestar's CSRF middleware (a signed double-submit token).

Both secrets are derived from the settings of the app serving the request. The router is built
at import time and learns them only at the first request, hence the small lazy middleware.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec
from litestar.config.csrf import CSRFConfig
from litestar.connection import ASGIConnection
from litestar.datastructures import MutableScopeHeaders
from litestar.datastructures.cookie import Cookie
from litestar.enums import ScopeType
from litestar.middleware.base import MiddlewareProtocol
from litestar.middleware.csrf import CSRFMiddleware
from litestar.middleware.session.base import (
    BaseBackendConfig,
    BaseSessionBackend,
    SessionMiddleware,
)
from litestar.types import ASGIApp, Empty, Message, Receive, Scope, Scopes, ScopeSession, Send
from litestar.utils.scope.state import ScopeState

from app.config import Settings

COOKIE_PATH = "/dashboard"
SESSION_COOKIE = "tollgate_session"
CSRF_COOKIE = "tollgate_csrf"
CSRF_FIELD = "_csrf_token"  # the form field Litestar's CSRF middleware reads

# Used when neither TOLLGATE_SESSION_SECRET nor an admin token is set: sessions then last as
# long as this process.
_PROCESS_SECRET = secrets.token_bytes(32)

# Pages show account data: never cache them, never frame them, run only our own script.
SECURITY_HEADERS = {
    "cache-control": "no-store",
    "content-security-policy": (
        "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
        "frame-ancestors 'none'"
    ),
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
}


def master_key(settings: Settings) -> bytes:
    """32 bytes every instance with the same settings agrees on (see `TOLLGATE_SESSION_SECRET`).
    Hashed with a label, so the key never equals the admin token it may come from."""
    if settings.session_secret:
        material = b"session-secret\0" + settings.session_secret.encode()
    elif settings.admin_token:
        material = b"admin-token\0" + settings.admin_token.encode()
    else:
        return _PROCESS_SECRET
    return hashlib.sha256(b"tollgate-dashboard\0" + material).digest()


def subkey(key: bytes, purpose: str) -> bytes:
    """Independent keys for sessions and CSRF tokens from one master key."""
    return hmac.new(key, purpose.encode(), hashlib.sha256).digest()


def csrf_token(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    """The token to put in this page's forms (set by the CSRF middleware)."""
    token = ScopeState.from_scope(connection.scope).csrf_token
    return "" if token is Empty else str(token)


# ── the signed session cookie ───────────────────────────────────────────────────────────────


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign_session(data: dict[str, Any], secret: bytes, expires_at: int) -> str:
    body = msgspec.json.encode({"d": data, "exp": expires_at})
    mac = hmac.new(secret, body, hashlib.sha256).digest()
    return f"{_b64(body)}.{_b64(mac)}"


def verify_session(value: str, secret: bytes, now: float) -> dict[str, Any] | None:
    """The session data if `value` was signed with `secret` and has not expired."""
    body_text, _, mac_text = value.partition(".")
    try:
        body, mac = _unb64(body_text), _unb64(mac_text)
    except (binascii.Error, ValueError):
        return None
    if not hmac.compare_digest(mac, hmac.new(secret, body, hashlib.sha256).digest()):
        return None
    try:
        payload = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return None
    if not isinstance(payload, dict) or not isinstance(payload.get("d"), dict):
        return None
    expires_at = payload.get("exp")
    if not isinstance(expires_at, int) or expires_at <= now:
        return None
    data: dict[str, Any] = payload["d"]
    return data


class SignedCookieBackend(BaseSessionBackend["SignedCookieConfig"]):
    """Litestar session backend: the whole session in one signed cookie."""

    def _cookie(self, value: str, max_age: int) -> str:
        c = self.config
        return Cookie(
            key=c.key,
            value=value,
            max_age=max_age,
            path=c.path,
            domain=c.domain,
            secure=c.secure,
            httponly=c.httponly,
            samesite=c.samesite,
        ).to_header(header="")

    async def store_in_message(
        self,
        scope_session: ScopeSession,
        message: Message,
        connection: ASGIConnection[Any, Any, Any, Any],
    ) -> None:
        headers = MutableScopeHeaders.from_message(message)
        if scope_session and scope_session is not Empty and isinstance(scope_session, dict):
            expires_at = int(time.time()) + self.config.max_age
            value = sign_session(scope_session, self.config.secret, expires_at)
            headers.add("set-cookie", self._cookie(value, self.config.max_age))
        elif self.config.key in connection.cookies:
            headers.add("set-cookie", self._cookie("", 0))

    async def load_from_connection(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> dict[str, Any]:
        value = connection.cookies.get(self.config.key)
        if not value:
            return {}
        return verify_session(value, self.config.secret, time.time()) or {}

    def get_session_id(self, connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
        return None


@dataclass
class SignedCookieConfig(BaseBackendConfig[SignedCookieBackend]):
    _backend_class = SignedCookieBackend

    secret: bytes
    max_age: int
    key: str = SESSION_COOKIE
    path: str = COOKIE_PATH
    domain: str | None = None
    secure: bool = False
    httponly: bool = True
    samesite: Literal["lax", "strict", "none"] = "lax"
    scopes: Scopes = field(default_factory=lambda: {ScopeType.HTTP})
    exclude: str | list[str] | None = None
    exclude_opt_key: str = "skip_session"


# ── the middleware of the dashboard's router ────────────────────────────────────────────────


def build_stack(app: ASGIApp, settings: Settings) -> ASGIApp:
    """Session outside, CSRF inside: the CSRF check may read the form, the handler re-reads it
    from the request's cache."""
    key = master_key(settings)
    secure = settings.resolved_public_url.startswith("https://")
    protected = CSRFMiddleware(
        app=app,
        config=CSRFConfig(
            secret=subkey(key, "csrf").hex(),
            cookie_name=CSRF_COOKIE,
            cookie_path=COOKIE_PATH,
            cookie_secure=secure,
            cookie_httponly=True,
            cookie_samesite="lax",
            header_name="x-csrf-token",
        ),
    )
    backend = SignedCookieBackend(
        SignedCookieConfig(
            secret=subkey(key, "session"),
            max_age=int(settings.session_hours * 3600),
            secure=secure,
        )
    )
    return SessionMiddleware(app=protected, backend=backend)


class DashboardSecurity(MiddlewareProtocol):
    """Sessions, CSRF and security headers, configured from the serving app's settings."""

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
