"""Screenshots of the dashboard for the README, run by hand:

    python -m tests.dashboard.screenshots [--out docs]

Starts a gateway on a fresh database (TEST_DATABASE_URL, DATABASE_URL or the embedded server),
seeds a month of usage for a demo account, signs in through the real sign-in form in headless
Chromium (/usr/bin/chromium) and writes `dashboard-overview.png`, `dashboard-usage.png`,
`dashboard-keys.png` (a few keys with their limits, one of them partly spent) and
`dashboard-notifications.png` (the settings saved through the form, and a low-balance crossing
emailed to a local SMTP server).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import re
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from playwright.async_api import Page, async_playwright

from app.db import migrate
from tests.conftest import ADMIN_TOKEN, new_account_with_key
from tests.dashboard.conftest import CHROMIUM, CHROMIUM_ARGS, sign_in, start_dashboard
from tests.dashboard.seed import ingest, usage_events
from tests.support import database
from tests.support.receivers import MailSink

VIEWPORT = {"width": 1280, "height": 900}


async def take(out: Path) -> list[Path]:
    server, _ = await database.server_url()
    url = await database.create_database(server)
    await asyncio.to_thread(migrate.upgrade, url)
    sink = MailSink().start()
    dashboard = start_dashboard(url, TOLLGATE_SMTP_URL=sink.url, TOLLGATE_NOTIFICATIONS=True)
    written: list[Path] = []
    try:
        async with httpx.AsyncClient(
            base_url=dashboard.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=60
        ) as admin:
            account, key = await new_account_with_key(admin, "Acme Robotics", credit="150.00")
            now = datetime.now(UTC)
            await ingest(admin, usage_events(account["id"], now))
            await seed_notifications(admin, account["id"])
            await seed_keys(admin, account["id"], now)
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
            )
            context = await browser.new_context(
                base_url=dashboard.url, viewport=VIEWPORT, device_scale_factor=1
            )
            page = await context.new_page()
            await sign_in(page, key)
            for name, path in (
                ("overview", "/dashboard"),
                ("usage", "/dashboard/usage"),
                ("keys", "/dashboard/keys"),
                ("notifications", "/dashboard/notifications"),
            ):
                await page.goto(path)
                if name == "keys":  # one key's change form open, as a click opens it
                    await page.locator("tbody.key:has-text('ci runner') summary").click()
                    await page.mouse.move(0, 0)
                if name == "notifications":
                    await save_notifications(page)
                target = out / f"dashboard-{name}.png"
                await page.screenshot(path=str(target), full_page=name != "usage")
                written.append(target)
            await browser.close()
    finally:
        dashboard.server.stop()
        dashboard.upstream.stop()
        dashboard.stripe.stop()
        sink.stop()
        await database.drop_database(server, url)
    return written


# (name, fields of `POST /admin/accounts/{id}/keys`, prompt and completion tokens spent today)
KEYS: tuple[tuple[str, dict[str, Any], tuple[int, int]], ...] = (
    ("production", {"spend_limit": {"amount": "200.00", "period": "month"}}, (2_400_000, 600_000)),
    (
        "ci runner",
        {
            "scope": "inference",
            "spend_limit": {"amount": "5.00", "period": "day", "timezone": "Europe/Berlin"},
            "allowed_models": ["llama-3.1-8b", "llama-3.3-70b"],
            "expires_days": 90,
        },
        (3_000_000, 900_000),
    ),
    ("notebooks", {"scope": "inference"}, (800_000, 200_000)),
)


async def seed_keys(admin: httpx.AsyncClient, account_id: str, now: datetime) -> None:
    """A few keys with their limits, each with some spend today."""
    for n, (name, fields, (prompt, completion)) in enumerate(KEYS):
        body = {k: v for k, v in fields.items() if k != "expires_days"} | {"name": name}
        if "expires_days" in fields:
            expires = now + timedelta(days=fields["expires_days"])
            body["expires_at"] = expires.strftime("%Y-%m-%dT%H:00:00Z")
        made = await admin.post(f"/admin/accounts/{account_id}/keys", json=body)
        assert made.status_code == 201, made.text
        event = {
            "id": f"seed-key-{account_id}-{n}",
            "account_id": account_id,
            "api_key_id": made.json()["id"],
            "time": (now - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "model": "llama-3.3-70b",
            "endpoint": "/v1/chat/completions",
            "prompt_tokens": prompt,
            "completion_tokens": completion,
        }
        await ingest(admin, [event])


async def seed_notifications(admin: httpx.AsyncClient, account_id: str) -> None:
    """An address, and a low-balance threshold just above the credit left, so that the keys'
    usage crosses it."""
    account = (await admin.get(f"/admin/accounts/{account_id}")).json()
    threshold = math.ceil((Decimal(account["available"]) + 1) / 10) * 10
    patched = await admin.patch(
        f"/admin/accounts/{account_id}",
        json={"email": "billing@acme-robotics.test", "low_balance_threshold": f"{threshold}.00"},
    )
    assert patched.status_code == 200, patched.text


async def save_notifications(page: Page) -> None:
    """Once the outbox worker has sent what it sends, untick the payment receipts and save, as
    a customer would."""
    deadline = time.monotonic() + 15
    while re.search(r'email-state pending"', await page.content()):
        if time.monotonic() > deadline:
            raise RuntimeError("the low-balance email was not sent within 15 s")
        await asyncio.sleep(0.5)
        await page.reload()
    await page.get_by_role("checkbox", name="Payment receipt").uncheck()
    await page.get_by_role("button", name="Save").click()
    await page.wait_for_url("**/dashboard/notifications")
    await page.mouse.move(0, 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for path in asyncio.run(take(args.out)):
        print(path)


if __name__ == "__main__":
    main()
