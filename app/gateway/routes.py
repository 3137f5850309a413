"""The proxied endpoints of SPEC 3.1. Each hands the raw request to the `Gateway`."""

from __future__ import annotations

from typing import Any

from litestar import Request, post
from litestar.types import ASGIApp

from app.gateway import requests as rq
from app.gateway.proxy import Gateway


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
