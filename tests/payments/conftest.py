"""Billing fixtures: the fake Stripe, a gateway with the billing routes, funded accounts."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import ADMIN_TOKEN, new_account_with_key
from tests.payments.apps import billing_app, start
from tests.support.fake_stripe import FakeStripe
from tests.support.live import LiveServer


@pytest.fixture(scope="session")
def fake_stripe() -> Iterator[FakeStripe]:
    fake = FakeStripe().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="session")
def billing_server(database_url: str, fake_stripe: FakeStripe) -> Iterator[LiveServer]:
    server = start(billing_app(database_url, fake_stripe))
    yield server
    server.stop()


@pytest.fixture
def billing(
    billing_server: LiveServer, fake_stripe: FakeStripe, clean_db: AsyncEngine
) -> LiveServer:
    fake_stripe.reset()
    return billing_server


@pytest.fixture
async def billing_admin(billing: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=billing.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30
    ) as client:
        yield client


@pytest.fixture
async def customer(
    billing: LiveServer, billing_admin: httpx.AsyncClient
) -> AsyncIterator[tuple[dict[str, Any], httpx.AsyncClient]]:
    """A new account (no credit) and a client authenticated with its key."""
    account, key = await new_account_with_key(billing_admin)
    async with httpx.AsyncClient(
        base_url=billing.url, headers={"Authorization": f"Bearer {key}"}, timeout=30
    ) as client:
        yield account, client
