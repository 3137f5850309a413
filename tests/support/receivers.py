"""Real receivers on loopback for notification tests: an HTTP endpoint that verifies Standard
Webhooks signatures with the `standardwebhooks` package, and an SMTP server from `aiosmtpd`
that keeps the messages it receives."""

from __future__ import annotations

import asyncio
import email
import email.policy
import threading
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tests.support.live import LiveServer
from tests.support.process import free_port


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    verified: Any  # the parsed body when the signature verified, else None
    at: float


@dataclass
class WebhookReceiver:
    """Answers each request with `statuses` in turn (then 200), after `delay` seconds."""

    secret: str | None = None
    statuses: list[int] = field(default_factory=list)
    delay: float = 0.0
    received: list[Received] = field(default_factory=list)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        verified = None
        if self.secret is not None:
            try:
                verified = Webhook(self.secret).verify(body, headers)
            except WebhookVerificationError:
                verified = None
        self.received.append(Received(headers, body, verified, time.monotonic()))
        if self.delay:
            await asyncio.sleep(self.delay)
        status = self.statuses.pop(0) if self.statuses else 200
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    def types(self) -> list[str]:
        return [r.verified["type"] for r in self.received if r.verified is not None]

    async def wait_for(self, count: int, seconds: float = 10.0) -> list[Received]:
        deadline = time.monotonic() + seconds
        while len(self.received) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.received)} of {count} webhooks arrived")
            await asyncio.sleep(0.05)
        return self.received


def serve_receiver(receiver: WebhookReceiver) -> LiveServer:
    return LiveServer(receiver).start()


class MailSink:
    """An SMTP server on loopback (aiosmtpd) keeping every message it accepts."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self._lock = threading.Lock()
        self.port = free_port()
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self._lock:
            self.messages.append(parsed)  # type: ignore[arg-type]
        return "250 OK"

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def start(self) -> MailSink:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    async def wait_for(self, count: int, seconds: float = 10.0) -> list[EmailMessage]:
        deadline = time.monotonic() + seconds
        while len(self.messages) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.messages)} of {count} emails arrived")
            await asyncio.sleep(0.05)
        return self.messages
