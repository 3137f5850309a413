"""The operator console (SPEC 12) in Debian's headless Chromium, and its rules over HTTP: roles
enforced by the server, sign-in slowed after failures, a dashboard session opening nothing."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import httpx
from playwright.async_api import Page
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import new_account_with_key
from tests.console.helpers import PASSWORD, client_signed_in, csrf, set_password_and_sign_in
from tests.dashboard.conftest import Customer, Dashboard, sign_in
from tests.dashboard.seed import ingest, usage_events


async def test_an_operator_sets_a_password_finds_an_account_and_grants_credit(
    clean_db: AsyncEngine,
    page: Page,
    dashboard: Dashboard,
    customer: Customer,
    make_operator: Any,
) -> None:
    token = await make_operator("ops@example.com", "billing")
    await set_password_and_sign_in(page, token, "ops@example.com")
    # By name …
    await page.goto("/console/accounts")
    await page.fill("input[name=q]", "acme rob")
    await page.press("input[name=q]", "Enter")
    await page.click("#accounts a:has-text('Acme Robotics')")
    await page.wait_for_url(f"**/console/accounts/{customer.id}")
    assert "€25.00" in await page.inner_text("#balance")
    # … and by key prefix.
    await page.goto(f"/console/accounts?q={customer.key[:11]}")
    assert await page.locator("#accounts tbody tr").count() == 1
    await page.goto(f"/console/accounts/{customer.id}")
    await page.select_option("#credit-form select[name=kind]", "grant")
    await page.fill("#credit-form input[name=amount]", "5.50")
    await page.fill("#credit-form input[name=reason]", "goodwill: outage on Monday")
    await page.click("#credit-form button[type=submit]")
    await page.wait_for_url(f"**/console/accounts/{customer.id}")
    assert "€30.50" in await page.inner_text("#balance")
    first_row = await page.inner_text("#ledger tbody tr:first-child")
    assert "goodwill: outage on Monday" in first_row and "€5.50" in first_row
    assert "€30.50" in first_row  # its running balance
    await page.goto("/console/audit")
    row = await page.inner_text("#audit tbody tr:first-child")
    assert "ops@example.com" in row and "credit.added" in row
    async with clean_db.connect() as connection:
        ledger = await connection.scalar(
            text("SELECT sum(amount) FROM ledger_entries WHERE account_id = :a"),
            {"a": customer.id},
        )
    assert ledger == Decimal("30.50")


async def test_a_viewer_cannot_grant_not_even_by_posting_the_form_by_hand(
    clean_db: AsyncEngine,
    dashboard: Dashboard,
    customer: Customer,
    make_operator: Any,
) -> None:
    token = await make_operator("viewer@example.com", "viewer")
    async with client_signed_in(dashboard, token, "viewer@example.com") as client:
        shown = await client.get(f"/console/accounts/{customer.id}")
        assert shown.status_code == 200 and "credit-form" not in shown.text
        posted = await client.post(
            f"/console/accounts/{customer.id}/credit",
            data={
                "kind": "grant",
                "amount": "100",
                "reason": "please",
                "_csrf_token": csrf(shown.text),
            },
        )
        assert posted.status_code == 403
        assert "viewer" in posted.text
        suspended = await client.post(
            f"/console/accounts/{customer.id}/suspend", data={"_csrf_token": csrf(shown.text)}
        )
        assert suspended.status_code == 403
        assert (await client.get("/console/operators")).status_code == 403
    async with clean_db.connect() as connection:
        assert (
            await connection.scalar(
                text("SELECT count(*) FROM ledger_entries WHERE account_id = :a"),
                {"a": customer.id},
            )
            == 1
        )


async def test_five_wrong_passwords_slow_the_address_down(
    clean_db: AsyncEngine,
    dashboard: Dashboard,
    make_operator: Any,
) -> None:
    token = await make_operator("slow@example.com", "admin")
    async with client_signed_in(dashboard, token, "slow@example.com"):
        pass
    async with httpx.AsyncClient(base_url=dashboard.url, timeout=30) as client:
        statuses = []
        for _ in range(6):
            login = await client.get("/console/login")
            answer = await client.post(
                "/console/login",
                data={
                    "email": "slow@example.com",
                    "password": "wrong",
                    "_csrf_token": csrf(login.text),
                },
            )
            statuses.append(answer.status_code)
        assert statuses == [401, 401, 401, 401, 429, 429]
        assert int(answer.headers["retry-after"]) > 0
        # The right password too, while slowed down.
        login = await client.get("/console/login")
        right = await client.post(
            "/console/login",
            data={
                "email": "slow@example.com",
                "password": PASSWORD,
                "_csrf_token": csrf(login.text),
            },
        )
        assert right.status_code == 429


async def test_a_dashboard_session_opens_nothing_here(
    page: Page, dashboard: Dashboard, customer: Customer
) -> None:
    await sign_in(page, customer.key)
    await page.goto("/console")
    assert page.url.endswith("/console/login")
    await page.goto(f"/console/accounts/{customer.id}")
    assert page.url.endswith("/console/login")


PAGES = [
    "/console",
    "/console/accounts",
    "/console/audit",
    "/console/operators",
    "/console/usage",
    "/console/usage?from=2020-01-01&to=2020-12-31&model=llama-3.3-70b",
    "/console/usage.csv",
    "/console/invoices",
    "/console/invoices?period=2020-01&status=final",
    "/console/pricing",
    "/console/webhooks",
]


async def test_every_page_renders_empty_and_with_a_month_of_usage(
    clean_db: AsyncEngine,
    dashboard: Dashboard,
    operator: httpx.AsyncClient,
    make_operator: Any,
) -> None:
    token = await make_operator("admin@example.com", "admin")
    async with client_signed_in(dashboard, token, "admin@example.com") as client:
        for path in PAGES:
            response = await client.get(path)
            assert response.status_code == 200, (path, response.text[:300])
        account, _ = await new_account_with_key(operator, name="Busy", credit="500.00")
        from datetime import UTC, datetime

        await ingest(operator, usage_events(account["id"], datetime.now(UTC)))
        for path in [*PAGES, f"/console/accounts/{account['id']}", "/console/accounts?sort=spend"]:
            response = await client.get(path)
            assert response.status_code == 200, (path, response.text[:300])
        overview = (await client.get("/console")).text
        assert "Busy" in overview or "No usage this month" in overview
        await asyncio.sleep(0)
