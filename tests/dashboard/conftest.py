"""Dashboard fixtures: one live gateway (fake upstream, fake Stripe, its real public URL) and one
headless Chromium tab for the whole session, its cookies cleared before each test. Every test
makes its own account, so no test needs an empty database."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright

from app.main import create_app
from tests.conftest import ADMIN_TOKEN, make_settings, new_account_with_key
from tests.support.fake_stripe import FakeStripe
from tests.support.live import LiveServer
from tests.support.upstream import FakeUpstream

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
WEBHOOK_SECRET = "whsec_dashboard_tests"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Dashboard:
    server: LiveServer
    stripe: FakeStripe
    upstream: FakeUpstream

    @property
    def url(self) -> str:
        return self.server.url


def start_dashboard(database_url: str, **overrides: Any) -> Dashboard:
    stripe = FakeStripe().start()
    upstream = FakeUpstream().start()
    # The port is chosen first so that Checkout's return URL points at this very server.
    port = free_port()
    settings = make_settings(
        database_url,
        UPSTREAM_BASE_URL=upstream.url,
        STRIPE_API_KEY=stripe.api_key,
        STRIPE_API_BASE=stripe.url,
        STRIPE_WEBHOOK_SECRET=WEBHOOK_SECRET,
        TOLLGATE_PUBLIC_URL=f"http://127.0.0.1:{port}",
        **overrides,
    )
    return Dashboard(LiveServer(create_app(settings), port=port).start(), stripe, upstream)


@pytest.fixture(scope="session")
def dashboard(database_url: str) -> Iterator[Dashboard]:
    running = start_dashboard(database_url)
    yield running
    running.server.stop()
    running.upstream.stop()
    running.stripe.stop()


@pytest.fixture
async def operator(dashboard: Dashboard) -> AsyncIterator[httpx.AsyncClient]:
    """The admin API of the dashboard's gateway."""
    async with httpx.AsyncClient(
        base_url=dashboard.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30
    ) as client:
        yield client


@dataclass
class Customer:
    account: dict[str, Any]
    key: str

    @property
    def id(self) -> str:
        return str(self.account["id"])


@pytest.fixture
async def customer(operator: httpx.AsyncClient) -> Customer:
    """A new account with €25.00 purchased (the `standard` tier) and one key."""
    account, key = await new_account_with_key(operator, name="Acme Robotics", credit="25.00")
    return Customer(account, key)


@pytest.fixture(scope="session")
def chromium() -> Path:
    if not CHROMIUM.exists():
        pytest.skip(
            "the dashboard's browser tests need Debian's chromium at /usr/bin/chromium "
            "(apt-get install chromium; .ci/run installs it)"
        )
    return CHROMIUM


@pytest.fixture(scope="session")
async def browser(chromium: Path) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(chromium), args=CHROMIUM_ARGS, headless=True
        )
        yield launched
        await launched.close()


@pytest.fixture(scope="session")
async def shared_page(browser: Browser, dashboard: Dashboard) -> AsyncIterator[Page]:
    context = await browser.new_context(base_url=dashboard.url, accept_downloads=True)
    context.set_default_timeout(10_000)
    opened = await context.new_page()
    # "Revoke …? This can't be undone." — the tests mean it.
    opened.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    yield opened
    await context.close()


@pytest.fixture
async def page(shared_page: Page) -> AsyncIterator[Page]:
    """One tab for the whole session (a new browser context costs more than a test), signed
    out and without request routing at the start of every test."""
    await shared_page.context.clear_cookies()
    await shared_page.goto("about:blank")
    yield shared_page
    await shared_page.unroute_all(behavior="ignoreErrors")


async def sign_in(page: Page, key: str) -> None:
    """Type the key and press Enter, as a person would."""
    await page.goto("/dashboard/login")
    await page.fill("input[name=api_key]", key)
    await page.press("input[name=api_key]", "Enter")
    await page.wait_for_url("**/dashboard")
