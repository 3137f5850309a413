"""The demo's webhook receiver: the demo registers it as a webhook endpoint, so the events of
the demo account (a limit reached, low credit, …) arrive here signed as any receiver gets
them, are checked with the `standardwebhooks` package, and are listed at `/` (newest first)."""

from __future__ import annotations

import html
import json
from collections import deque
from datetime import UTC, datetime
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

KEPT = 50


def create_sink_app(secret: str) -> Any:
    received: deque[tuple[str, bool, str, str]] = deque(maxlen=KEPT)
    webhook = Webhook(secret)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":  # served with lifespan off
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = bool(message.get("more_body", False))
        if scope["method"] == "POST":
            headers = {k.decode(): v.decode() for k, v in scope["headers"]}
            try:
                event: Any = webhook.verify(body, headers)
                verified = True
            except WebhookVerificationError:
                event, verified = json.loads(body or b"{}"), False
            at = datetime.now(UTC).strftime("%H:%M:%S")
            received.appendleft(
                (at, verified, str(event.get("type")), json.dumps(event.get("data"), indent=1))
            )
            await _reply(send, 200, b"ok", "text/plain")
            return
        rows = "".join(
            f"<tr><td>{at}</td><td>{'✓ signed' if ok else '✗ bad signature'}</td>"
            f"<td><b>{html.escape(kind)}</b></td><td><pre>{html.escape(data)}</pre></td></tr>"
            for at, ok, kind, data in received
        )
        page = (
            "<!doctype html><meta charset=utf-8><meta http-equiv=refresh content=3>"
            "<title>Tollgate demo webhooks</title><body style='font-family:system-ui'>"
            "<h1>Webhooks received</h1><p>The demo account's notifications, as a webhook "
            "endpoint receives them (this page refreshes itself).</p>"
            f"<table cellpadding=6>{rows or '<tr><td>None yet.</td></tr>'}</table>"
        )
        await _reply(send, 200, page.encode(), "text/html; charset=utf-8")

    return app


async def _reply(send: Any, status: int, body: bytes, content_type: str) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type.encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
