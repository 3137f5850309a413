"""The dashboard in a real headless Chromium against a live gateway (SPEC 9, issue 7).

One browser for the whole session, a fresh context (no cookies) per test, and a new account per
test. Stripe is the local fake; its Checkout page is served by intercepting the browser's
request for the URL the fake hands out."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest
from playwright.async_api import Browser, Page, Route, expect

from app.dashboard.format import money
from tests.conftest import new_account_with_key
from tests.dashboard.conftest import WEBHOOK_SECRET, Customer, Dashboard, sign_in
from tests.dashboard.seed import ingest
from tests.support import fake_stripe


def _z(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _event(customer: Customer, n: int, when: datetime, model: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": f"{customer.id}-{n}",
        "account_id": customer.id,
        "time": _z(when),
        "model": model,
        "endpoint": "/v1/chat/completions",
        "prompt_tokens": 1000 + 37 * n,
        "completion_tokens": 400 + 11 * n,
        **extra,
    }


async def _usage_api(dashboard: Dashboard, key: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=dashboard.url, timeout=30) as client:
        response = await client.post(
            "/v1/usage/completions", json=body, headers={"Authorization": f"Bearer {key}"}
        )
    assert response.status_code == 200, response.text
    rows: list[dict[str, Any]] = response.json()["data"]
    return rows


def _sdk(dashboard: Dashboard, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{dashboard.url}/v1", api_key=key, max_retries=0)


# ── signing in ──────────────────────────────────────────────────────────────────────────────


async def test_sign_in_with_a_key_shows_the_balance(page: Page, customer: Customer) -> None:
    await page.goto("/dashboard")
    await expect(page).to_have_url(re.compile(r"/dashboard/login"))
    await sign_in(page, customer.key)  # types the key and presses Enter

    await expect(page.locator("#balance")).to_have_text("€25.00")
    await expect(page.locator("#tier")).to_have_text(re.compile("standard", re.I))
    await expect(page.locator(".stats")).to_contain_text("50 requests/min · 100,000 tokens/min")
    await expect(page.locator("#tier-progress")).to_have_attribute("value", "25.00")
    await expect(page.locator("main")).to_contain_text("Buy €75.00 more to reach pro")
    await expect(page.locator(".account-name")).to_have_text("Acme Robotics")

    [session] = [c for c in await page.context.cookies() if c["name"] == "tollgate_session"]
    assert session["httpOnly"] is True
    assert session["sameSite"] == "Lax"
    assert session["path"] == "/dashboard"
    assert customer.key not in session["value"]


async def test_a_wrong_key_gets_a_clear_message(page: Page) -> None:
    await page.goto("/dashboard/login")
    await page.fill("input[name=api_key]", "tg-this-is-not-a-key")
    await page.press("input[name=api_key]", "Enter")
    await expect(page.locator("#signin-error")).to_contain_text("That API key isn't valid")
    await expect(page).to_have_url(re.compile(r"/dashboard/login$"))
    assert not [c for c in await page.context.cookies() if c["name"] == "tollgate_session"]


async def test_a_revoked_key_cannot_sign_in_and_revoking_ends_its_sessions(
    page: Page, operator: httpx.AsyncClient, customer: Customer
) -> None:
    made = await operator.post(f"/admin/accounts/{customer.id}/keys", json={"name": "laptop"})
    second = made.json()
    await sign_in(page, second["key"])
    await expect(page.locator("#balance")).to_have_text("€25.00")

    assert (await operator.delete(f"/admin/keys/{second['id']}")).status_code == 200
    await page.goto("/dashboard/usage")
    await expect(page).to_have_url(re.compile(r"/dashboard/login\?next="))
    await expect(page.locator(".notice")).to_contain_text("was revoked")

    await page.fill("input[name=api_key]", second["key"])
    await page.press("input[name=api_key]", "Enter")
    await expect(page.locator("#signin-error")).to_contain_text("revoked key no longer works")


async def test_sign_out_ends_the_session(page: Page, customer: Customer) -> None:
    await sign_in(page, customer.key)
    await page.click("text=Sign out")
    await expect(page.locator(".notice")).to_have_text("You are signed out.")
    await page.goto("/dashboard/keys")
    await expect(page).to_have_url(re.compile(r"/dashboard/login\?next=%2Fdashboard%2Fkeys"))
    # Signing in again goes back to the page that was asked for.
    await page.fill("input[name=api_key]", customer.key)
    await page.press("input[name=api_key]", "Enter")
    await expect(page).to_have_url(re.compile(r"/dashboard/keys$"))


async def test_pages_work_without_javascript(
    browser: Browser, dashboard: Dashboard, customer: Customer
) -> None:
    context = await browser.new_context(base_url=dashboard.url, java_script_enabled=False)
    try:
        page = await context.new_page()
        await sign_in(page, customer.key)
        await expect(page.locator("#balance")).to_have_text("€25.00")
        await expect(page.locator("svg.chart rect.bar")).to_have_count(30)
    finally:
        await context.close()


# ── overview and usage ──────────────────────────────────────────────────────────────────────


async def test_the_chart_has_one_bar_per_day(
    page: Page, dashboard: Dashboard, operator: httpx.AsyncClient, customer: Customer
) -> None:
    now = datetime.now(UTC)
    today = now.date()
    used = {
        today: now - timedelta(seconds=30),
        today - timedelta(days=3): now - timedelta(days=3),
        today - timedelta(days=29): now - timedelta(days=29),  # the oldest day on the chart
    }
    events = [_event(customer, i, when, "llama-3.3-70b") for i, when in enumerate(used.values())]
    events.append(_event(customer, 9, now - timedelta(days=30), "llama-3.3-70b"))  # off chart
    await ingest(operator, events)

    await sign_in(page, customer.key)
    bars = page.locator("svg.chart g.day")
    await expect(page.locator("svg.chart rect.bar")).to_have_count(30)
    days = [
        date.fromisoformat(d) for d in await bars.evaluate_all("gs => gs.map(g => g.dataset.date)")
    ]
    assert days == [today - timedelta(days=29 - i) for i in range(30)]

    heights = await page.locator("svg.chart rect.bar").evaluate_all(
        "rs => rs.map(r => parseFloat(r.getAttribute('height')))"
    )
    assert {day for day, h in zip(days, heights, strict=True) if h > 0} == set(used)
    assert heights.count(0.0) == 27

    # Each bar's tooltip names its day and its cost, as the usage API reports it.
    rows = await _usage_api(
        dashboard,
        customer.key,
        {"start_time": _z(datetime.combine(days[0], datetime.min.time(), UTC))},
    )
    api_costs = {date.fromisoformat(r["windowStart"][:10]): Decimal(r["cost"]) for r in rows}
    assert set(api_costs) == set(used)
    for day, cost in api_costs.items():
        title = await page.locator(f'svg.chart g.day[data-date="{day}"] > title').text_content()
        assert title == f"{day.isoformat()}: {money(cost, 'EUR')}"
    total = sum(api_costs.values(), Decimal(0))
    await expect(page.locator("#chart-total")).to_have_text(f"{money(total, 'EUR')} in total")
    month = sum((c for d, c in api_costs.items() if d >= today.replace(day=1)), Decimal(0))
    await expect(page.locator("#month-to-date")).to_have_text(money(month, "EUR"))


async def test_usage_csv_downloads_and_matches_the_usage_api(
    page: Page, dashboard: Dashboard, operator: httpx.AsyncClient, customer: Customer
) -> None:
    # Last month, so every event is in the past whatever day the test runs on.
    first = (datetime.now(UTC).replace(day=1) - timedelta(days=1)).replace(
        day=1, hour=0, minute=0, second=0, microsecond=0
    )
    events = [
        _event(customer, 1, first + timedelta(days=2, hours=9), "llama-3.3-70b"),
        _event(customer, 2, first + timedelta(days=2, hours=15), "llama-3.3-70b"),
        _event(customer, 3, first + timedelta(days=2, hours=16), "llama-3.1-8b"),
        _event(
            customer,
            4,
            first + timedelta(days=9, hours=1),
            "llama-3.3-70b-online",
            search_requests=1,
        ),
        _event(customer, 5, first + timedelta(days=20, hours=23), "pixtral-12b-2409", images=3),
    ]
    await ingest(operator, events)
    month = f"{first:%Y-%m}"

    await sign_in(page, customer.key)
    await page.click("nav >> text=Usage")
    await page.fill("input[name=month]", month)
    await page.click("button:has-text('Show')")
    await expect(page).to_have_url(re.compile(rf"month={month}"))
    await expect(page.locator("#usage-table tbody tr")).to_have_count(4)

    async with page.expect_download() as info:
        await page.click("#csv-link")
    download = await info.value
    assert download.suggested_filename == f"tollgate-usage-{month}.csv"
    text = await asyncio.to_thread((await download.path()).read_text)
    records = list(csv.DictReader(io.StringIO(text)))

    next_month = (first + timedelta(days=32)).replace(day=1)
    api = await _usage_api(
        dashboard,
        customer.key,
        {
            "start_time": _z(first),
            "end_time": _z(next_month),
            "window_size": "DAY",
            "group_by": ["model"],
        },
    )
    assert len(api) == 4
    assert [
        (
            r["date"],
            r["model"],
            int(r["requests"]),
            int(r["input_tokens"]),
            int(r["output_tokens"]),
            int(r["images"]),
            int(r["search_requests"]),
            r["cost"],
            r["currency"],
            r["window_start"],
            r["window_end"],
        )
        for r in records
    ] == [
        (
            a["windowStart"][:10],
            a["groupBy"]["model"],
            a["requests"],
            a["input_token"],
            a["output_token"],
            a["images"],
            a["search_requests"],
            a["cost"],
            a["currency"],
            a["windowStart"],
            a["windowEnd"],
        )
        for a in api
    ]
    total = sum((Decimal(a["cost"]) for a in api), Decimal(0))
    await expect(page.locator("#usage-total")).to_contain_text(money(total, "EUR"))
    await expect(page.locator("#usage-total")).to_contain_text("5")  # requests


# ── top-up ──────────────────────────────────────────────────────────────────────────────────


async def _fake_checkout(route: Route) -> None:
    await route.fulfill(status=200, content_type="text/html", body="<h1>Fake Stripe Checkout</h1>")


def _sessions_of(dashboard: Dashboard, customer: Customer) -> list[fake_stripe.RecordedRequest]:
    return [
        call
        for call in dashboard.stripe.calls("/v1/checkout/sessions")
        if call.form.get("client_reference_id") == customer.id
    ]


async def test_top_up_goes_to_stripe_checkout_and_comes_back_to_the_new_balance(
    page: Page, dashboard: Dashboard, customer: Customer
) -> None:
    await page.route("https://checkout.stripe.test/**", _fake_checkout)
    await sign_in(page, customer.key)
    await page.click("nav >> text=Top up")
    await expect(page.locator("#limits")).to_contain_text("From €5.00 to €10,000.00")

    await page.click("button.preset:has-text('€20.00')")
    await page.wait_for_url("https://checkout.stripe.test/c/pay/cs_test_*")
    await expect(page.locator("h1")).to_have_text("Fake Stripe Checkout")
    [created] = _sessions_of(dashboard, customer)
    form = created.form
    assert form["line_items[0][price_data][unit_amount]"] == "2000"
    assert form["line_items[0][price_data][currency]"] == "eur"
    assert form["mode"] == "payment"
    session = dashboard.stripe.objects[page.url.rsplit("/", 1)[1]]
    assert session["url"] == page.url

    # Stripe sends the customer back before its webhook arrives: the page waits, then shows
    # the credited balance without a reload.
    back = session["success_url"].replace("{CHECKOUT_SESSION_ID}", session["id"])
    assert back.startswith(f"{dashboard.url}/dashboard/topup/return?session_id=")
    await page.goto(back)
    await expect(page.locator("#topup-state")).to_contain_text("Waiting for Stripe")
    await expect(page.locator("#balance")).to_have_text("€25.00")

    completed = fake_stripe.checkout_session(customer.id, 2000, session_id=session["id"])
    payload = json.dumps(fake_stripe.event("checkout.session.completed", completed)).encode()
    async with httpx.AsyncClient(base_url=dashboard.url) as client:
        delivered = await client.post(
            "/webhooks/stripe",
            content=payload,
            headers={"Stripe-Signature": fake_stripe.sign(payload, WEBHOOK_SECRET)},
        )
    assert delivered.status_code == 200, delivered.text
    await expect(page.locator("#balance")).to_have_text("€45.00")
    await expect(page.locator("h1")).to_have_text("Payment received")
    await page.goto("/dashboard")
    await expect(page.locator("#balance")).to_have_text("€45.00")


async def test_top_up_with_a_custom_amount_and_its_limits(
    page: Page, dashboard: Dashboard, customer: Customer
) -> None:
    await page.route("https://checkout.stripe.test/**", _fake_checkout)
    await sign_in(page, customer.key)
    await page.goto("/dashboard/topup")
    await page.fill("#amount", "3")
    await page.press("#amount", "Enter")
    await expect(page.locator("#topup-error")).to_contain_text("between 5.00 and 10000.00")
    assert not _sessions_of(dashboard, customer)

    await page.fill("#amount", "12.50")
    await page.press("#amount", "Enter")
    await page.wait_for_url("https://checkout.stripe.test/**")
    [created] = _sessions_of(dashboard, customer)
    assert created.form["line_items[0][price_data][unit_amount]"] == "1250"

    await page.goto("/dashboard/topup?canceled=1")
    await expect(page.locator("main")).to_contain_text("Checkout was canceled")


# ── API keys ────────────────────────────────────────────────────────────────────────────────


async def test_a_created_key_is_shown_once_works_and_fails_once_revoked(
    page: Page, dashboard: Dashboard, customer: Customer
) -> None:
    await sign_in(page, customer.key)
    await page.click("nav >> text=API keys")
    await page.fill("#key-name", "ci runner")
    await page.click("button:has-text('Create key')")
    new_key = (await page.locator("#new-key").text_content() or "").strip()
    assert re.fullmatch(r"tg-[A-Za-z0-9_-]{43}", new_key)

    reply = await _sdk(dashboard, new_key).chat.completions.create(
        model="llama-3.3-70b", messages=[{"role": "user", "content": "Hello from CI"}]
    )
    assert reply.choices[0].message.content

    # Shown once: the list shows its prefix and name, never the key again.
    await page.goto("/dashboard/keys")
    assert new_key not in await page.content()
    row = page.locator(f'#active-keys tr[data-prefix="{new_key[:11]}"]')
    await expect(row).to_contain_text("ci runner")
    await expect(row).not_to_contain_text("Not used yet")  # its request shows as last use
    await expect(page.locator("#active-keys tr[data-key-id]")).to_have_count(2)

    dialogs: list[str] = []
    page.once("dialog", lambda dialog: dialogs.append(dialog.message))
    await row.locator("button:has-text('Revoke')").click()
    await expect(page.locator(".notice")).to_contain_text(f"Revoked {new_key[:11]}")
    assert dialogs and dialogs[0].startswith(f"Revoke {new_key[:11]}…?")
    await expect(page.locator(f'#revoked-keys tr[data-prefix="{new_key[:11]}"]')).to_be_visible()

    # The gateway caches a key's identity for at most a second.
    for _ in range(40):
        try:
            await _sdk(dashboard, new_key).chat.completions.create(
                model="llama-3.3-70b", messages=[{"role": "user", "content": "again"}]
            )
        except openai.AuthenticationError as exc:
            assert exc.status_code == 401
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail("a revoked key kept working")
    # The key the session signed in with is untouched.
    await page.reload()
    await expect(page.locator("#active-keys tr[data-key-id]")).to_have_count(1)


async def test_revoking_the_signed_in_key_signs_out(page: Page, customer: Customer) -> None:
    await sign_in(page, customer.key)
    await page.goto("/dashboard/keys")
    await page.click("button:has-text('Revoke and sign out')")
    await expect(page).to_have_url(re.compile(r"/dashboard/login$"))
    await expect(page.locator(".notice")).to_contain_text("the key you signed in with")
    await page.goto("/dashboard")
    await expect(page).to_have_url(re.compile(r"/dashboard/login"))


# ── CSRF ────────────────────────────────────────────────────────────────────────────────────


async def test_a_form_posted_without_its_csrf_token_is_refused(
    page: Page, customer: Customer
) -> None:
    await sign_in(page, customer.key)
    await page.goto("/dashboard/keys")
    form = page.locator("form[action='/dashboard/keys']")
    await form.locator("input[name=_csrf_token]").evaluate("input => input.remove()")
    async with page.expect_response(re.compile(r"/dashboard/keys$")) as info:
        await form.locator("button").click()
    assert (await info.value).status == 403
    await expect(page.locator("h1")).to_have_text("This form has expired")

    # Nothing was created.
    await page.goto("/dashboard/keys")
    await expect(page.locator("#active-keys tr[data-key-id]")).to_have_count(1)


# ── invoices and auto-recharge ──────────────────────────────────────────────────────────────


async def test_invoices_list_view_and_pdf(
    page: Page, operator: httpx.AsyncClient, customer: Customer
) -> None:
    first = (datetime.now(UTC).replace(day=1) - timedelta(days=1)).replace(
        day=1, hour=12, minute=0, second=0, microsecond=0
    )
    await ingest(operator, [_event(customer, 1, first + timedelta(days=4), "llama-3.3-70b")])
    await sign_in(page, customer.key)
    await page.goto("/dashboard/invoices")
    await expect(page.locator("#no-invoices")).to_be_visible()

    ran = await operator.post("/admin/invoices/run", json={"period": f"{first:%Y-%m}"})
    assert ran.status_code == 200, ran.text
    await page.reload()
    link = page.locator("#invoice-list tbody tr th a")
    await expect(link).to_have_count(1)
    number = (await link.text_content() or "").strip()
    assert re.fullmatch(r"INV-\d{4}-\d{6}", number)
    await link.click()
    await expect(page.locator("h1")).to_have_text(f"Invoice {number}")
    await expect(page.locator("#invoice-lines")).to_contain_text("llama-3.3-70b: input tokens")
    await expect(page.locator("#invoice-lines")).to_contain_text("Subtotal")
    await expect(page.locator(".invoice")).to_contain_text("Acme Robotics")

    async with page.expect_download() as info:
        await page.click("text=Download PDF")
    download = await info.value
    assert download.suggested_filename == f"{number}.pdf"
    content = await asyncio.to_thread((await download.path()).read_bytes)
    assert content.startswith(b"%PDF-")

    await page.goto("/dashboard/invoices/00000000-0000-0000-0000-000000000000")
    await expect(page.locator("h1")).to_have_text("Page not found")


async def test_auto_recharge_settings(page: Page, customer: Customer) -> None:
    await sign_in(page, customer.key)
    await page.click("nav >> text=Auto-recharge")
    await expect(page.locator("#auto-recharge-status")).to_have_text("Off")
    await expect(page.locator("main")).to_contain_text("No card is saved yet")

    # Enabling needs a card saved by a Checkout top-up.
    await page.check("#enabled")
    await page.fill("#threshold", "10")
    await page.fill("#recharge-amount", "50")
    await page.click("button:has-text('Save')")
    await expect(page.locator(".error")).to_contain_text("no saved card")
    await expect(page.locator("#auto-recharge-status")).to_have_text("Off")

    # Saving it off keeps the values for later.
    await page.uncheck("#enabled")
    await page.fill("#threshold", "10")
    await page.fill("#recharge-amount", "50")
    await page.click("button:has-text('Save')")
    await expect(page.locator("p[role=status]")).to_have_text("Auto-recharge settings saved.")
    await expect(page.locator("#threshold")).to_have_value("10.00")
    await expect(page.locator("#recharge-amount")).to_have_value("50.00")

    await page.fill("#recharge-amount", "2")
    await page.click("button:has-text('Save')")
    await expect(page.locator(".error")).to_contain_text("between 5.00 and 10000.00")


async def test_a_second_account_sees_only_its_own_data(
    page: Page, operator: httpx.AsyncClient, customer: Customer
) -> None:
    other, other_key = await new_account_with_key(operator, name="Other Ltd", credit="7.00")
    keys = await operator.post(f"/admin/accounts/{customer.id}/keys", json={})
    await sign_in(page, other_key)
    await expect(page.locator("#balance")).to_have_text("€7.00")
    # Another account's key id can't be revoked from here.
    token = await page.locator("input[name=_csrf_token]").first.input_value()
    response = await page.request.post(
        f"/dashboard/keys/{keys.json()['id']}/revoke", form={"_csrf_token": token}
    )
    assert response.status == 404
    assert other["id"] != customer.id
