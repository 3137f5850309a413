"""Keys and their spend controls in the dashboard (SPEC 3.6, 9): creating a key with a limit,
models and expiry, changing them, each key's spend this period, only `full` keys signed in, and
no key giving more rights than it has. In headless Chromium, and over plain HTTP where a form
is posted by hand."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import httpx
import openai
import pytest
from playwright.async_api import Browser, Page, expect

from app.dashboard.format import money
from tests.dashboard.conftest import Customer, Dashboard, sign_in
from tests.dashboard.seed import ingest

TOKEN_RE = re.compile(r'name="_csrf_token" value="([^"]+)"')


def _z(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def _new_key(
    operator: httpx.AsyncClient, customer: Customer, **fields: Any
) -> dict[str, Any]:
    made = await operator.post(f"/admin/accounts/{customer.id}/keys", json=fields)
    assert made.status_code == 201, made.text
    key: dict[str, Any] = made.json()
    return key


async def _key_info(dashboard: Dashboard, key: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=dashboard.url, timeout=30) as client:
        response = await client.get("/v1/key", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


async def _key_id(dashboard: Dashboard, customer: Customer) -> str:
    """The id of the customer's first key."""
    return str((await _key_info(dashboard, customer.key))["id"])


def _row(page: Page, key: dict[str, Any] | str) -> Any:
    prefix = key if isinstance(key, str) else key["prefix"]
    return page.locator(f'#active-keys tr[data-prefix="{prefix}"]')


# ── creating and changing ───────────────────────────────────────────────────────────────────


async def test_create_a_key_with_a_daily_limit_models_and_expiry(
    page: Page, dashboard: Dashboard, customer: Customer
) -> None:
    expires = (datetime.now(UTC) + timedelta(days=60)).replace(
        hour=18, minute=30, second=0, microsecond=0
    )
    await sign_in(page, customer.key)
    await page.goto("/dashboard/keys")
    form = page.locator("#create-key")
    await page.fill("#key-name", "batch jobs")
    await form.locator("input[name=scope][value=inference]").check()
    await page.fill("#new-amount", "5")
    await page.select_option("#new-period", "day")
    await page.fill("#new-timezone", "Europe/Paris")
    await form.locator("input[name=models][value='llama-3.1-8b']").check()
    await form.locator("input[name=models][value='deepseek-r1-70b']").check()
    await page.fill("#new-expires", f"{expires:%Y-%m-%dT%H:%M}")
    await page.click("button:has-text('Create key')")

    plaintext = (await page.locator("#new-key").text_content() or "").strip()
    assert re.fullmatch(r"tg-[A-Za-z0-9_-]{43}", plaintext)
    row = _row(page, plaintext[:11])
    await expect(row).to_contain_text("batch jobs")
    await expect(row.locator(".scope")).to_have_text("inference")
    await expect(row.locator(".limit")).to_have_text("€5.00 a day")
    await expect(row.locator(".spend")).to_contain_text("Europe/Paris")
    await expect(row.locator(".spend")).to_contain_text("€0.00 spent today")
    await expect(row.locator(".models")).to_have_text("llama-3.1-8b, deepseek-r1-70b")
    await expect(row.locator(".expires")).to_have_text(f"{expires:%Y-%m-%d %H:%M} UTC")
    await expect(row.locator("progress.limit-bar")).to_have_attribute("value", "0.0")

    # The gateway has exactly what the form said.
    info = await _key_info(dashboard, plaintext)
    assert info["name"] == "batch jobs"
    assert info["scope"] == "inference"
    assert info["spend_limit"] == {"amount": "5.00", "period": "day", "timezone": "Europe/Paris"}
    assert info["allowed_models"] == ["llama-3.1-8b", "deepseek-r1-70b"]
    assert info["expires_at"] == _z(expires)
    client = openai.AsyncOpenAI(base_url=f"{dashboard.url}/v1", api_key=plaintext, max_retries=0)
    reply = await client.chat.completions.create(
        model="llama-3.1-8b", messages=[{"role": "user", "content": "hi"}]
    )
    assert reply.choices[0].message.content
    with pytest.raises(openai.PermissionDeniedError):
        await client.chat.completions.create(
            model="llama-3.3-70b", messages=[{"role": "user", "content": "hi"}]
        )


async def test_a_refused_create_form_keeps_what_was_typed(page: Page, customer: Customer) -> None:
    await sign_in(page, customer.key)
    await page.goto("/dashboard/keys")
    await page.fill("#key-name", "typo")
    await page.fill("#new-amount", "5")
    await page.fill("#new-timezone", "Mars/Olympus_Mons")
    async with page.expect_response(re.compile(r"/dashboard/keys$")) as info:
        await page.click("button:has-text('Create key')")
    assert (await info.value).status == 400
    await expect(page.locator("#key-error")).to_contain_text("time zone")
    await expect(page.locator("#key-name")).to_have_value("typo")
    await expect(page.locator("#new-timezone")).to_have_value("Mars/Olympus_Mons")
    await expect(page.locator("#active-keys tr[data-key-id]")).to_have_count(1)


async def test_change_a_keys_limit_models_and_expiry(
    page: Page, dashboard: Dashboard, operator: httpx.AsyncClient, customer: Customer
) -> None:
    key = await _new_key(
        operator,
        customer,
        name="worker",
        spend_limit={"amount": "5.00", "period": "day"},
        allowed_models=["llama-3.1-8b"],
        expires_at=_z(datetime.now(UTC) + timedelta(days=3)),
    )
    await sign_in(page, customer.key)
    await page.goto("/dashboard/keys")
    row = _row(page, key)
    await expect(row.locator(".limit")).to_have_text("€5.00 a day")

    edit = page.locator(f"form[action='/dashboard/keys/{key['id']}']")
    await expect(edit).to_be_hidden()  # folded away until asked for
    await page.locator(f"tbody:has(tr[data-key-id='{key['id']}']) summary").click()
    await expect(edit.locator("input[name=limit_amount]")).to_have_value("5.00")
    await edit.locator("input[name=limit_amount]").fill("12.5")
    await edit.locator("select[name=limit_period]").select_option("week")
    await edit.locator("input[name=models][value='llama-3.1-8b']").uncheck()  # every model
    await edit.locator("input[name=expires_at]").fill("")  # never
    await edit.locator("button:has-text('Save changes')").click()

    await expect(page.locator(".notice")).to_have_text(f"Saved the changes to {key['prefix']}….")
    await expect(row.locator(".limit")).to_have_text("€12.50 a week")
    await expect(row.locator(".spend")).to_contain_text("spent this week")
    await expect(row.locator(".models")).to_have_text("All")
    await expect(row.locator(".expires")).to_have_text("Never")
    info = await _key_info(dashboard, key["key"])
    assert info["spend_limit"] == {"amount": "12.50", "period": "week", "timezone": "UTC"}
    assert info["allowed_models"] is None
    assert info["expires_at"] is None
    assert info["name"] == "worker"  # kept

    # A blank amount removes the limit.
    await page.locator(f"tbody:has(tr[data-key-id='{key['id']}']) summary").click()
    await edit.locator("input[name=limit_amount]").fill("")
    await edit.locator("button:has-text('Save changes')").click()
    await expect(row.locator(".limit")).to_have_text("No limit")
    assert (await _key_info(dashboard, key["key"]))["spend_limit"] is None


async def test_keys_are_created_and_changed_without_javascript(
    browser: Browser, dashboard: Dashboard, customer: Customer
) -> None:
    context = await browser.new_context(base_url=dashboard.url, java_script_enabled=False)
    try:
        page = await context.new_page()
        await sign_in(page, customer.key)
        await page.goto("/dashboard/keys")
        await page.fill("#new-amount", "3")
        await page.select_option("#new-period", "total")
        await page.click("button:has-text('Create key')")
        plaintext = (await page.locator("#new-key").text_content() or "").strip()
        row = _row(page, plaintext[:11])
        await expect(row.locator(".limit")).to_have_text("€3.00 in total")
        await expect(row.locator(".spend")).not_to_contain_text("resets")  # total never does

        group = page.locator(f"tbody:has(tr[data-prefix='{plaintext[:11]}'])")
        await group.locator("summary").click()  # <details> opens without script
        await group.locator("input[name=limit_amount]").fill("4")
        await group.locator("button:has-text('Save changes')").click()
        await expect(page.locator(".notice")).to_contain_text("Saved the changes")
        await expect(row.locator(".limit")).to_have_text("€4.00 in total")
    finally:
        await context.close()


async def test_a_refused_change_is_shown_in_its_row(
    page: Page, dashboard: Dashboard, operator: httpx.AsyncClient, customer: Customer
) -> None:
    key = await _new_key(operator, customer, spend_limit={"amount": "5.00", "period": "day"})
    await sign_in(page, customer.key)
    await page.goto("/dashboard/keys")
    await page.locator(f"tbody:has(tr[data-key-id='{key['id']}']) summary").click()
    edit = page.locator(f"form[action='/dashboard/keys/{key['id']}']")
    await edit.locator("input[name=limit_amount]").fill("1e3")
    async with page.expect_response(re.compile(r"/dashboard/keys/")) as info:
        await edit.locator("button:has-text('Save changes')").click()
    assert (await info.value).status == 400
    # Open again, with the message and what was typed.
    panel = page.locator(f"tbody:has(tr[data-key-id='{key['id']}']) details")
    await expect(panel.locator(".error")).to_contain_text("The spend limit must be a decimal")
    await expect(edit.locator("input[name=limit_amount]")).to_have_value("1e3")
    info_after = await _key_info(dashboard, key["key"])
    assert info_after["spend_limit"]["amount"] == "5.00"


async def test_a_limited_key_creates_keys_within_its_own_rights(
    page: Page, dashboard: Dashboard, operator: httpx.AsyncClient, customer: Customer
) -> None:
    expires = (datetime.now(UTC) + timedelta(days=10)).replace(second=0, microsecond=0)
    lead = await _new_key(
        operator,
        customer,
        spend_limit={"amount": "20.00", "period": "week", "timezone": "America/New_York"},
        allowed_models=["llama-3.3-70b"],
        expires_at=_z(expires),
    )
    await sign_in(page, lead["key"])
    await page.goto("/dashboard/keys")
    await expect(page.locator("#own-rights")).to_have_text(
        "The key you signed in with has a spend limit of €20.00 a week, may use only "
        f"llama-3.3-70b, expires {expires:%Y-%m-%d %H:%M} UTC: the keys it creates can have no "
        "more."
    )
    # The form starts at the most it may give, so creating as shown works; only its own model
    # is offered.
    await expect(page.locator("#create-key input[name=models]")).to_have_count(1)
    await page.click("button:has-text('Create key')")
    plaintext = (await page.locator("#new-key").text_content() or "").strip()
    info = await _key_info(dashboard, plaintext)
    assert info["spend_limit"] == {
        "amount": "20.00",
        "period": "week",
        "timezone": "America/New_York",
    }
    assert info["allowed_models"] == ["llama-3.3-70b"]
    assert info["expires_at"] == _z(expires)

    # One cent more is refused, with the reason, and nothing is created.
    await page.fill("#new-amount", "20.01")
    async with page.expect_response(re.compile(r"/dashboard/keys$")) as response:
        await page.click("button:has-text('Create key')")
    assert (await response.value).status == 403
    await expect(page.locator("#key-error")).to_have_text(
        "A key's spend limit cannot be higher than your key's own."
    )
    await expect(page.locator("#active-keys tr[data-key-id]")).to_have_count(3)


# ── spend this period ───────────────────────────────────────────────────────────────────────


async def test_a_limited_key_that_has_spent_shows_its_spend_bar(
    page: Page, dashboard: Dashboard, operator: httpx.AsyncClient, customer: Customer
) -> None:
    limited = await _new_key(
        operator, customer, name="nightly", spend_limit={"amount": "2.00", "period": "day"}
    )
    unlimited = await _new_key(operator, customer, name="laptop")
    now = datetime.now(UTC)
    events = [
        {
            "id": f"{limited['id']}-{n}",
            "account_id": customer.id,
            "api_key_id": key["id"],
            "time": _z(now - timedelta(seconds=n + 1)),
            "model": "llama-3.3-70b",
            "endpoint": "/v1/chat/completions",
            "prompt_tokens": 400_000,
            "completion_tokens": 100_000,
        }
        for n, key in enumerate((limited, limited, unlimited))
    ]
    await ingest(operator, events)
    # What the gateway says each key spent today (the limit's period: a UTC day).
    spent = Decimal((await _key_info(dashboard, limited["key"]))["usage"]["day"])
    month = Decimal((await _key_info(dashboard, unlimited["key"]))["usage"]["month"])
    assert Decimal(0) < spent < Decimal(2)

    await sign_in(page, customer.key)
    await page.goto("/dashboard/keys")
    row = _row(page, limited)
    await expect(row.locator(".spent")).to_have_text(money(spent, "EUR"))
    await expect(row.locator(".spend")).to_contain_text(f"{money(spent, 'EUR')} spent today")
    await expect(row.locator(".spend")).to_contain_text("resets")
    bar = row.locator("progress.limit-bar")
    percent = (spent / 2 * 100).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP)
    await expect(bar).to_have_attribute("value", str(percent))
    await expect(bar).to_have_attribute("max", "100")
    await expect(bar).not_to_have_class(re.compile("over"))
    other = _row(page, unlimited)
    await expect(other.locator(".limit")).to_have_text("No limit")
    await expect(other.locator(".spend")).to_contain_text(f"{money(month, 'EUR')} spent this month")
    await expect(other.locator("progress")).to_have_count(0)

    # Lowered below what it spent: a full bar, marked over.
    response = await operator.patch(
        f"/admin/keys/{limited['id']}", json={"spend_limit": {"amount": "0.10", "period": "day"}}
    )
    assert response.status_code == 200, response.text
    await page.reload()
    await expect(bar).to_have_attribute("value", "100.0")
    await expect(bar).to_have_class(re.compile("over"))


# ── who may sign in ─────────────────────────────────────────────────────────────────────────


async def test_an_inference_key_cannot_sign_in(
    page: Page, operator: httpx.AsyncClient, customer: Customer
) -> None:
    key = await _new_key(operator, customer, scope="inference")
    await page.goto("/dashboard/login")
    await page.fill("input[name=api_key]", key["key"])
    async with page.expect_response(re.compile(r"/dashboard/login$")) as info:
        await page.press("input[name=api_key]", "Enter")
    assert (await info.value).status == 403
    await expect(page.locator("#signin-error")).to_have_text(
        "This key has scope inference: it works for the API only. Sign in with a key whose "
        "scope is full."
    )
    assert not [c for c in await page.context.cookies() if c["name"] == "tollgate_session"]
    await page.goto("/dashboard")
    await expect(page).to_have_url(re.compile(r"/dashboard/login"))


async def test_a_session_ends_when_its_key_is_narrowed_or_expires(
    page: Page, dashboard: Dashboard, operator: httpx.AsyncClient, customer: Customer
) -> None:
    key = await _new_key(operator, customer, name="admin laptop")
    await sign_in(page, key["key"])
    response = await operator.patch(f"/admin/keys/{key['id']}", json={"scope": "inference"})
    assert response.status_code == 200, response.text
    await page.goto("/dashboard/usage")
    await expect(page).to_have_url(re.compile(r"/dashboard/login\?next="))
    await expect(page.locator(".notice")).to_contain_text("has scope inference")

    await sign_in(page, customer.key)
    ended = datetime.now(UTC) - timedelta(minutes=1)
    response = await operator.patch(
        f"/admin/keys/{await _key_id(dashboard, customer)}", json={"expires_at": _z(ended)}
    )
    assert response.status_code == 200, response.text
    await page.goto("/dashboard/keys")
    await expect(page).to_have_url(re.compile(r"/dashboard/login\?next="))
    await expect(page.locator(".notice")).to_contain_text(f"expired at {ended:%Y-%m-%d %H:%M} UTC")


# ── no more rights than the creating key ────────────────────────────────────────────────────


async def _signed_in(client: httpx.AsyncClient, key: str) -> str:
    """Signs in through the form; returns the CSRF token for the next forms."""
    page = await client.get("/dashboard/login")
    match = TOKEN_RE.search(page.text)
    assert match, page.text
    token = match.group(1)
    response = await client.post("/dashboard/login", data={"api_key": key, "_csrf_token": token})
    assert response.status_code == 303, response.text
    return token


def _listed(html: str) -> int:
    return len(re.findall(r'<tr data-key-id="', html))


async def test_a_form_posted_with_more_rights_than_its_key_is_refused(
    dashboard: Dashboard, operator: httpx.AsyncClient, customer: Customer
) -> None:
    limited = await _new_key(
        operator,
        customer,
        name="team lead",
        spend_limit={"amount": "10.00", "period": "day"},
        allowed_models=["llama-3.1-8b"],
    )
    async with httpx.AsyncClient(base_url=dashboard.url, timeout=30) as client:
        token = await _signed_in(client, limited["key"])
        before = _listed((await client.get("/dashboard/keys")).text)
        assert before == 2

        refused = [
            ({"models": "llama-3.1-8b"}, "need one that is no higher"),  # no limit at all
            (
                {"limit_amount": "50", "limit_period": "day", "models": "llama-3.1-8b"},
                "cannot be higher than your key",
            ),
            (
                {"limit_amount": "5", "limit_period": "month", "models": "llama-3.1-8b"},
                "cannot be higher than your key",  # a longer period is more
            ),
            ({"limit_amount": "5", "limit_period": "day"}, "must name theirs"),  # every model
            (
                {"limit_amount": "5", "limit_period": "day", "models": "llama-3.3-70b"},
                "may not use llama-3.3-70b",
            ),
        ]
        for fields, message in refused:
            response = await client.post(
                "/dashboard/keys", data={"_csrf_token": token, "name": "sneaky", **fields}
            )
            assert response.status_code == 403, (fields, response.text)
            assert message in response.text
            assert 'id="new-key"' not in response.text
        # Nor may it raise its own limit, or another key's beyond its own.
        for target in (limited["id"], await _key_id(dashboard, customer)):
            response = await client.post(
                f"/dashboard/keys/{target}",
                data={
                    "_csrf_token": token,
                    "limit_amount": "100",
                    "limit_period": "day",
                    "models": "llama-3.1-8b",
                },
            )
            assert response.status_code == 403, response.text
        after = await client.get("/dashboard/keys")
        assert _listed(after.text) == before
        assert (await _key_info(dashboard, limited["key"]))["spend_limit"]["amount"] == "10.00"

        # Within its rights it works.
        allowed = await client.post(
            "/dashboard/keys",
            data={
                "_csrf_token": token,
                "limit_amount": "2.50",
                "limit_period": "day",
                "models": "llama-3.1-8b",
                "scope": "inference",
            },
        )
        assert allowed.status_code == 200, allowed.text
        assert 'id="new-key"' in allowed.text
        assert _listed(allowed.text) == before + 1


async def test_an_inference_session_cannot_be_forged_into_creating_keys(
    dashboard: Dashboard, operator: httpx.AsyncClient, customer: Customer
) -> None:
    """A key narrowed to inference after signing in can post no form: its session is over."""
    key = await _new_key(operator, customer)
    async with httpx.AsyncClient(base_url=dashboard.url, timeout=30) as client:
        token = await _signed_in(client, key["key"])
        await operator.patch(f"/admin/keys/{key['id']}", json={"scope": "inference"})
        response = await client.post("/dashboard/keys", data={"_csrf_token": token})
        assert response.status_code == 303
        assert response.headers["location"] == "/dashboard/login"
    async with httpx.AsyncClient(base_url=dashboard.url, timeout=30) as client:
        token = await _signed_in(client, customer.key)
        assert _listed((await client.get("/dashboard/keys")).text) == 2


async def test_another_accounts_key_cannot_be_changed(
    dashboard: Dashboard, operator: httpx.AsyncClient, customer: Customer
) -> None:
    other = await operator.post("/admin/accounts", json={"name": "Other Ltd"})
    foreign = await operator.post(f"/admin/accounts/{other.json()['id']}/keys", json={})
    async with httpx.AsyncClient(base_url=dashboard.url, timeout=30) as client:
        token = await _signed_in(client, customer.key)
        # Changes are CSRF-protected forms like every other.
        response = await client.post(
            f"/dashboard/keys/{await _key_id(dashboard, customer)}", data={"limit_amount": "1"}
        )
        assert response.status_code == 403
        assert "This form has expired" in response.text
        for target in (foreign.json()["id"], "not-a-key"):
            response = await client.post(
                f"/dashboard/keys/{target}", data={"_csrf_token": token, "limit_amount": "1"}
            )
            assert response.status_code == 404
    assert (await _key_info(dashboard, foreign.json()["key"]))["spend_limit"] is None
    assert (await _key_info(dashboard, customer.key))["spend_limit"] is None
