"""Notification fixtures: a gateway whose outbox worker runs, a webhook receiver, an SMTP sink."""

# `upstream` is the gateway tests' fake upstream, shared here.

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import ADMIN_TOKEN, Gateways
from tests.gateway.conftest import FIXTURE_PRICING, upstream
from tests.payments.apps import WEBHOOK_SECRET
from tests.support.live import LiveServer
from tests.support.receivers import MailSink, WebhookReceiver, serve_receiver
from tests.support.upstream import FakeUpstream

__all__ = ["upstream"]


@pytest.fixture(scope="session")
def mail_sink() -> Iterator[MailSink]:
    sink = MailSink().start()
    yield sink
    sink.stop()


@pytest.fixture
def notifying(
    gateways: Gateways,
    upstream: FakeUpstream,
    mail_sink: MailSink,
    clean_db: AsyncEngine,
) -> LiveServer:
    upstream.reset()
    mail_sink.messages.clear()
    return gateways.get(
        UPSTREAM_BASE_URL=upstream.url,
        TOLLGATE_PRICING_DIR=FIXTURE_PRICING,
        TOLLGATE_NOTIFICATIONS=True,
        TOLLGATE_NOTIFICATION_RETRY_SECONDS=0.3,
        TOLLGATE_SMTP_URL=mail_sink.url,
        TOLLGATE_MAIL_FROM="Tollgate Billing <billing@tollgate.test>",
        STRIPE_WEBHOOK_SECRET=WEBHOOK_SECRET,
    )


@pytest.fixture
async def admin_n(notifying: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=notifying.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30
    ) as client:
        yield client


@pytest.fixture
def receiver() -> Iterator[tuple[WebhookReceiver, LiveServer]]:
    hook = WebhookReceiver()
    server = serve_receiver(hook)
    yield hook, server
    server.stop()
