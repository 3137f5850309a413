"""Screenshots of the dashboard for the README, run by hand:

    python -m tests.dashboard.screenshots [--out docs]

Starts a gateway on a fresh database (TEST_DATABASE_URL, DATABASE_URL or the embedded server),
seeds a month of usage for a demo account, signs in through the real sign-in form in headless
Chromium (/usr/bin/chromium) and writes `dashboard-overview.png` and `dashboard-usage.png`.
"""

from __future__ import annotations

import argparse
import asyncio
from datetime import UTC, datetime
from pathlib import Path

import httpx
from playwright.async_api import async_playwright

from app.db import migrate
from tests.conftest import ADMIN_TOKEN, new_account_with_key
from tests.dashboard.conftest import CHROMIUM, CHROMIUM_ARGS, sign_in, start_dashboard
from tests.dashboard.seed import ingest, usage_events
from tests.support import database

VIEWPORT = {"width": 1280, "height": 900}


async def take(out: Path) -> list[Path]:
    server, _ = await database.server_url()
    url = await database.create_database(server)
    await asyncio.to_thread(migrate.upgrade, url)
    dashboard = start_dashboard(url)
    written: list[Path] = []
    try:
        async with httpx.AsyncClient(
            base_url=dashboard.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=60
        ) as admin:
            account, key = await new_account_with_key(admin, "Acme Robotics", credit="150.00")
            await ingest(admin, usage_events(account["id"], datetime.now(UTC)))
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
            )
            context = await browser.new_context(
                base_url=dashboard.url, viewport=VIEWPORT, device_scale_factor=1
            )
            page = await context.new_page()
            await sign_in(page, key)
            for name, path in (("overview", "/dashboard"), ("usage", "/dashboard/usage")):
                await page.goto(path)
                target = out / f"dashboard-{name}.png"
                await page.screenshot(path=str(target), full_page=name == "overview")
                written.append(target)
            await browser.close()
    finally:
        dashboard.server.stop()
        dashboard.upstream.stop()
        dashboard.stripe.stop()
        await database.drop_database(server, url)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for path in asyncio.run(take(args.out)):
        print(path)


if __name__ == "__main__":
    main()
