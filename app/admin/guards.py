"""The admin bearer token, compared in constant time."""

from __future__ import annotations

import hmac

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from app.errors import InvalidApiKey


def require_admin(connection: ASGIConnection, _: BaseRouteHandler) -> None:  # type: ignore[type-arg]
    expected: str | None = connection.app.state.settings.admin_token
    scheme, _sep, token = (connection.headers.get("authorization") or "").partition(" ")
    if (
        not expected
        or scheme.lower() != "bearer"
        or not hmac.compare_digest(token.strip().encode(), expected.encode())
    ):
        raise InvalidApiKey("Missing or incorrect admin token.")
