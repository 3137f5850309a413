"""Screenshots of the operator console for the README, run by hand:

    python -m tests.console.screenshots [--out docs]

Starts a gateway on a fresh database (TEST_DATABASE_URL, DATABASE_URL or the embedded server)
and seeds a month of usage for six customer accounts through the admin API (as
`tests.dashboard.screenshots` does), with their top-ups paid through a signed Stripe
Checkout webhook and a few keys with limits on the main one. Ingestion writes every ledger
entry at the moment it runs, so the seed then dates each usage entry like the event it
charges and each top-up like its payment, as a month of live traffic would have. An admin
operator is made with `tollgate operators create`, sets its password from the printed link
and signs in through the real forms in headless Chromium (/usr/bin/chromium); it grants
goodwill credit with a reason and runs last month's invoices from the console's own forms;
the scheduler's default jobs (rollups, partitions, reconciliation) then run once. Writes
`console-overview.png` (the whole page) and `console-account.png` (the main account's page
from its balance to the ledger's first rows; the ledger pages 50 entries). About ten seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import httpx
from playwright.async_api import FloatRect, Page, ViewportSize, async_playwright
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db import migrate
from app.db.engine import create_engine
from app.jobs import default_jobs, run_job
from tests.conftest import ADMIN_TOKEN
from tests.console.conftest import create_operator
from tests.console.helpers import set_password_and_sign_in
from tests.dashboard.conftest import CHROMIUM, CHROMIUM_ARGS, WEBHOOK_SECRET, start_dashboard
from tests.dashboard.screenshots import KEYS
from tests.dashboard.seed import ingest, usage_events
from tests.support import database, fake_stripe

VIEWPORT = ViewportSize(width=1280, height=900)
OPERATOR = "ops@acme-gateway.example"
MAIN = "Acme Robotics"
LEDGER_ROWS = 14  # of the account page's ledger in its screenshot
PAID_AT: dict[str, datetime] = {}  # Checkout Session id → when it was paid


class Customer(NamedTuple):
    name: str
    email: str
    top_ups: tuple[tuple[int, int], ...]  # (days ago, euros), each paid through Checkout
    requests: float  # requests relative to the dashboard's seed
    tokens: float  # tokens per request relative to it
    days: int  # of usage, up to now
    seed: int


ACCOUNTS = (
    Customer(MAIN, "billing@acme-robotics.example", ((31, 100), (13, 150)), 1.0, 12, 30, 7),
    Customer(
        "Northwind Analytics", "finance@northwind.example", ((31, 300), (11, 300)), 2.4, 10, 30, 11
    ),
    Customer("Kestrel Translate", "ops@kestrel.example", ((30, 100),), 0.8, 8, 30, 5),
    Customer("Blue Heron Labs", "hello@blueheron.example", ((24, 50),), 0.45, 6, 24, 3),
    Customer("Papercut Studio", "team@papercut.example", ((17, 20),), 0.25, 6, 16, 13),
    Customer("Fjord Legal AI", "it@fjordlegal.example", ((6, 50),), 0.3, 10, 6, 17),
)


async def take(out: Path) -> list[Path]:
    server, _ = await database.server_url()
    url = await database.create_database(server)
    await asyncio.to_thread(migrate.upgrade, url)
    dashboard = start_dashboard(url)
    engine = create_engine(url, pool_size=2)
    written: list[Path] = []
    try:
        now = datetime.now(UTC)
        async with httpx.AsyncClient(
            base_url=dashboard.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=60
        ) as admin:
            ids = {c.name: await seed_account(admin, c, now) for c in ACCOUNTS}
            low = await admin.patch(
                f"/admin/accounts/{ids[MAIN]}", json={"low_balance_threshold": "25.00"}
            )
            assert low.status_code == 200, low.text
        await date_ledger_like_the_traffic(engine)
        # `tollgate operators create`, as an operator runs it (its own event loop: off this one).
        token = await asyncio.to_thread(create_operator, url, OPERATOR, "admin")
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
            )
            context = await browser.new_context(
                base_url=dashboard.url, viewport=VIEWPORT, device_scale_factor=1
            )
            page = await context.new_page()
            await set_password_and_sign_in(page, token, OPERATOR)
            account_path = f"/console/accounts/{ids[MAIN]}"
            await grant_goodwill(page, account_path, now)
            await run_last_month(page, now)
            for job in default_jobs():
                await run_job(engine, job)
            for name, path in (("overview", "/console"), ("account", account_path)):
                await page.goto(path)
                await page.mouse.move(0, 0)
                target = out / f"console-{name}.png"
                if name == "account":  # its top, to the ledger's first rows (of 50 a page)
                    row = page.locator("#ledger tbody tr").nth(LEDGER_ROWS - 1)
                    box = await row.bounding_box()
                    assert box is not None
                    bottom = box["y"] + box["height"]
                    clip = FloatRect(x=0, y=0, width=VIEWPORT["width"], height=bottom)
                    await page.screenshot(path=str(target), full_page=True, clip=clip)
                else:
                    await page.screenshot(path=str(target), full_page=True)
                written.append(target)
            await browser.close()
    finally:
        await engine.dispose()
        dashboard.server.stop()
        dashboard.upstream.stop()
        dashboard.stripe.stop()
        await database.drop_database(server, url)
    return written


async def seed_account(admin: httpx.AsyncClient, customer: Customer, now: datetime) -> str:
    made = await admin.post(
        "/admin/accounts", json={"name": customer.name, "email": customer.email}
    )
    assert made.status_code == 201, made.text
    account_id: str = made.json()["id"]
    for days_ago, euros in customer.top_ups:
        await pay_checkout(admin, account_id, euros, now - timedelta(days=days_ago))
    # The main account has the dashboard screenshots' keys with their limits, the others one.
    keys = [(n, f) for n, f, _ in KEYS] if customer.name == MAIN else [("default", {})]
    key_ids = [await new_key(admin, account_id, key_name, fields, now) for key_name, fields in keys]
    events = traffic_of(account_id, now, customer)
    rng = random.Random(customer.seed)
    for event in events:
        if len(key_ids) == 1:
            event["api_key_id"] = key_ids[0]
        elif event["model"] == "llama-3.1-8b" and rng.random() < 0.4:
            event["api_key_id"] = key_ids[1]  # ci runner: the small model, under its limit
        else:
            event["api_key_id"] = key_ids[0 if rng.random() < 0.75 else 2]
    await ingest(admin, events)
    return account_id


async def new_key(
    admin: httpx.AsyncClient, account_id: str, name: str, fields: dict[str, Any], now: datetime
) -> str:
    body = {k: v for k, v in fields.items() if k != "expires_days"} | {"name": name}
    if "expires_days" in fields:
        expires = now + timedelta(days=fields["expires_days"])
        body["expires_at"] = expires.strftime("%Y-%m-%dT%H:00:00Z")
    made = await admin.post(f"/admin/accounts/{account_id}/keys", json=body)
    assert made.status_code == 201, made.text
    key_id: str = made.json()["id"]
    return key_id


def traffic_of(account_id: str, now: datetime, customer: Customer) -> list[dict[str, Any]]:
    """The dashboard's month of usage, scaled (copies with other seeds, or a sample, and
    longer requests), each event with a request id of its own as a client's would be."""
    rng = random.Random(customer.seed)
    events: list[dict[str, Any]] = []
    copies = max(1, round(customer.requests))
    for copy in range(copies):
        events += usage_events(account_id, now, days=customer.days, seed=customer.seed * 100 + copy)
    # The seed moves today's events after `now` to the last seconds before it: left out.
    recent = (now - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    keep = customer.requests / copies
    chosen = [e for e in events if rng.random() < keep and e["time"] < recent]
    for event in chosen:
        event["id"] = f"req_{rng.getrandbits(96):024x}"
        event["prompt_tokens"] = int(event["prompt_tokens"] * customer.tokens)
        event["completion_tokens"] = int(event["completion_tokens"] * customer.tokens / 2)
    return chosen


async def pay_checkout(admin: httpx.AsyncClient, account_id: str, euros: int, at: datetime) -> None:
    """A top-up paid through Stripe Checkout, as Stripe's signed webhook reports it."""
    session = fake_stripe.checkout_session(account_id, euros * 100)
    session["created"] = int(at.timestamp())
    event = fake_stripe.event("checkout.session.completed", session)
    event["created"] = int(at.timestamp())
    payload = json.dumps(event).encode()
    delivered = await admin.post(
        "/webhooks/stripe",
        content=payload,
        headers={
            "Stripe-Signature": fake_stripe.sign(payload, WEBHOOK_SECRET),
            "Content-Type": "application/json",
        },
    )
    assert delivered.status_code == 200, delivered.text
    assert delivered.json()["outcome"] == "credited", delivered.text
    PAID_AT[session["id"]] = at  # for the ledger's date below


async def date_ledger_like_the_traffic(engine: AsyncEngine) -> None:
    """Each usage entry at its event's time (plus its latency), each top-up at its payment's:
    ingestion wrote them all now, live traffic would have written them as it came."""
    async with engine.begin() as connection:
        await connection.execute(
            text(
                """
                UPDATE ledger_entries l SET created_at = e.time + interval '2 seconds'
                FROM usage_events e
                WHERE l.account_id = e.account_id AND l.id = e.id AND l.kind = 'usage'
                """
            )
        )
        for session_id, at in PAID_AT.items():
            for table, column, value in (
                ("stripe_payments", "checkout_session_id", session_id),
                ("ledger_entries", "reference", f"stripe:cs:{session_id}"),
            ):
                await connection.execute(
                    text(f"UPDATE {table} SET created_at = :at WHERE {column} = :v"),
                    {"at": at, "v": value},
                )


async def grant_goodwill(page: Page, account_path: str, now: datetime) -> None:
    """Goodwill credit with a reason, from the account page's form."""
    outage = now - timedelta(days=5)
    await page.goto(account_path)
    await page.select_option("#credit-form select[name=kind]", "grant")
    await page.fill("#credit-form input[name=amount]", "15.00")
    await page.fill(
        "#credit-form input[name=reason]",
        f"Goodwill: upstream errors on {outage.day} {outage:%b}, ticket #4182",
    )
    await page.click("#credit-form button[type=submit]")
    await page.wait_for_selector("[role=status]")


async def run_last_month(page: Page, now: datetime) -> None:
    """Last month's invoices, from the invoices page's form."""
    period = (now.replace(day=1) - timedelta(days=1)).strftime("%Y-%m")
    await page.goto("/console/invoices")
    await page.fill("#run-period", period)
    await page.click("#run-form button[type=submit]")
    await page.wait_for_url(f"**/console/invoices?period={period}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for path in asyncio.run(take(args.out)):
        print(path)


if __name__ == "__main__":
    main()
