"""The proxied endpoints of SPEC 3.1. Each hands the raw request to the `Gateway`, through
`ProxyFront` in front of Litestar (the routes below stay registered with Litestar, which
serves them only for paths the front does not match exactly)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from litestar import Request, post
from litestar.enums import ScopeType
from litestar.handlers import HTTPRouteHandler
from litestar.routes import HTTPRoute
from litestar.types import ASGIApp, Receive, Scope, Send

from app.errors import error_response
from app.gateway import requests as rq
from app.gateway.proxy import Gateway

if TYPE_CHECKING:
    from litestar import Litestar


def _gateway(request: Request[Any, Any, Any]) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


@post(rq.CHAT, include_in_schema=False)
async def chat_completions(request: Request[Any, Any, Any]) -> ASGIApp:
    return await _gateway(request).handle(request, rq.CHAT)


@post(rq.COMPLETIONS, include_in_schema=False)
async def completions(request: Request[Any, Any, Any]) -> ASGIApp:
    return await _gateway(request).handle(request, rq.COMPLETIONS)


@post(rq.EMBEDDINGS, include_in_schema=False)
async def embeddings(request: Request[Any, Any, Any]) -> ASGIApp:
    return await _gateway(request).handle(request, rq.EMBEDDINGS)


@post(rq.IMAGES, include_in_schema=False)
async def images_generations(request: Request[Any, Any, Any]) -> ASGIApp:
    return await _gateway(request).handle(request, rq.IMAGES)


@post(rq.TRANSCRIPTIONS, include_in_schema=False)
async def audio_transcriptions(request: Request[Any, Any, Any]) -> ASGIApp:
    return await _gateway(request).handle(request, rq.TRANSCRIPTIONS)


@post(rq.SPEECH, include_in_schema=False)
async def audio_speech(request: Request[Any, Any, Any]) -> ASGIApp:
    return await _gateway(request).handle(request, rq.SPEECH)


proxy_routes = [
    chat_completions,
    completions,
    embeddings,
    images_generations,
    audio_transcriptions,
    audio_speech,
]


_ENDPOINTS = frozenset(handler.paths.copy().pop() for handler in proxy_routes)


class ProxyFront:
    """The proxied routes served straight from the ASGI scope, in front of Litestar's own
    middleware, routing and response machinery (which the dashboard, console and admin keep):
    a proxied request needs none of them, and at concurrency 32 they were a fifth of the
    gateway's CPU (README, Performance). Errors still come from the one handler
    (`app.errors.error_response`), and Litestar's `before_send` hooks (the `x-request-id`) still
    wrap `send`, since they are applied outside the ASGI handler this replaces."""

    def __init__(self, app: Litestar, inner: ASGIApp) -> None:
        self._app = app
        self._inner = inner
        # The registered handlers carry the app's limits (the request body's size).
        self._routes: dict[str, tuple[str, HTTPRouteHandler]] = {}
        for route in app.routes:
            if route.path in _ENDPOINTS and isinstance(route, HTTPRoute):
                for handler in route.route_handlers:
                    if "POST" in handler.http_methods:
                        self._routes[route.path] = (route.path, handler)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = None
        if scope["type"] == ScopeType.HTTP and scope["method"] == "POST":
            found = self._routes.get(scope["path"])
        if found is None:
            await self._inner(scope, receive, send)
            return
        endpoint, handler = found
        scope["route_handler"] = handler
        request: Request[Any, Any, Any] = Request(scope, receive, send)
        try:
            respond = await self._app.state.gateway.handle(request, endpoint)
        except Exception as exc:  # the one error handler, as behind Litestar's middleware
            response = error_response(request, exc)
            respond = response.to_asgi_response(None, request)
        await respond(scope, receive, send)
