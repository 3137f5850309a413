"""Sessions, CSRF and their scope, over plain HTTP (no browser needed): the dashboard's cookie
and CSRF check must not touch the API, admin, webhook, health or metrics routes."""

from __future__ import annotations

import re
import time
from typing import Any

import httpx
import pytest

from app.dashboard import security
from tests.conftest import ADMIN_TOKEN, Gateways, make_settings, new_account_with_key
from tests.dashboard.conftest import Customer, Dashboard

TOKEN_RE = re.compile(r'name="_csrf_token" value="([^"]+)"')


async def _csrf(client: httpx.AsyncClient) -> str:
    page = await client.get("/dashboard/login")
    match = TOKEN_RE.search(page.text)
    assert match, page.text
    return match.group(1)


async def _sign_in(client: httpx.AsyncClient, key: str, **extra: str) -> httpx.Response:
    token = await _csrf(client)
    return await client.post(
        "/dashboard/login", data={"api_key": key, "_csrf_token": token, **extra}
    )


def _forged_session(database_url: str, data: dict[str, Any]) -> str:
    """A session cookie signed as any instance sharing the tests' admin token would sign it."""
    key = security.master_key(make_settings(database_url))
    return security.sign_session(data, security.subkey(key, "session"), int(time.time()) + 3600)


def _use_session(client: httpx.AsyncClient, value: str) -> None:
    # Where the server's own Set-Cookie lands in the jar, so a response replaces it.
    client.cookies.set("tollgate_session", value, domain="127.0.0.1", path="/dashboard")


async def test_sign_in_sets_a_signed_httponly_lax_cookie_and_security_headers(
    dashboard: Dashboard, customer: Customer
) -> None:
    async with httpx.AsyncClient(base_url=dashboard.url) as client:
        response = await _sign_in(client, customer.key)
        assert response.status_code == 303
        assert response.headers["location"] == "/dashboard"
        cookies = response.headers.get_list("set-cookie")
        [session] = [c for c in cookies if c.startswith("tollgate_session=")]
        attributes = {part.strip().lower() for part in session.split(";")[1:]}
        assert {"httponly", "path=/dashboard", "samesite=lax", "max-age=43200"} <= attributes
        assert customer.key not in session

        page = await client.get("/dashboard")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert page.headers["cache-control"] == "no-store"
        assert page.headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]


async def test_a_form_without_its_csrf_token_is_refused(
    dashboard: Dashboard, customer: Customer
) -> None:
    async with httpx.AsyncClient(base_url=dashboard.url) as client:
        await _csrf(client)  # the browser has the CSRF cookie, the form lacks the token
        response = await client.post("/dashboard/login", data={"api_key": customer.key})
        assert response.status_code == 403
        assert "This form has expired" in response.text
        assert "tollgate_session" not in response.headers.get("set-cookie", "")

    async with httpx.AsyncClient(base_url=dashboard.url) as other:
        foreign = await _csrf(other)  # a valid token, but of another browser
    async with httpx.AsyncClient(base_url=dashboard.url) as client:
        await _sign_in(client, customer.key)
        response = await client.post("/dashboard/keys", data={"_csrf_token": foreign})
        assert response.status_code == 403


async def test_csrf_and_sessions_do_not_touch_the_other_routes(
    dashboard: Dashboard, customer: Customer
) -> None:
    bearer = {"Authorization": f"Bearer {customer.key}"}
    async with httpx.AsyncClient(base_url=dashboard.url, timeout=30) as client:
        await _sign_in(client, customer.key)
        # Unsafe requests without any CSRF token work as they always did.
        chat = await client.post(
            "/v1/chat/completions",
            json={"model": "llama-3.3-70b", "messages": [{"role": "user", "content": "hi"}]},
            headers=bearer,
        )
        assert chat.status_code == 200, chat.text
        checkout = await client.post(
            "/v1/billing/checkout", json={"amount": "20.00"}, headers=bearer
        )
        assert checkout.status_code == 200, checkout.text
        created = await client.post(
            "/admin/accounts",
            json={"name": "via admin"},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        assert created.status_code == 201, created.text
        webhook = await client.post(
            "/webhooks/stripe", content=b"{}", headers={"Stripe-Signature": "t=1,v1=00"}
        )
        assert webhook.status_code == 400  # a bad signature, not a CSRF refusal
        assert webhook.json()["error"]["code"] == "invalid_signature"
        # …and none of them hands out dashboard cookies or headers.
        for response in (chat, checkout, created, webhook):
            assert "set-cookie" not in response.headers
            assert "content-security-policy" not in response.headers
        for path in ("/healthz", "/metrics", "/v1/models"):
            response = await client.get(path, headers=bearer)
            assert response.status_code == 200
            assert "set-cookie" not in response.headers


async def test_a_tampered_or_expired_session_is_signed_out(
    dashboard: Dashboard, customer: Customer, database_url: str
) -> None:
    async with httpx.AsyncClient(base_url=dashboard.url) as client:
        await _sign_in(client, customer.key)
        valid = client.cookies["tollgate_session"]
        key_id = (await client.get("/dashboard/keys")).text
        assert "this session" in key_id

    session = {"a": customer.id, "k": "", "t": int(time.time())}
    async with httpx.AsyncClient(base_url=dashboard.url) as client:
        # The forged cookie is only as good as its data: this one names no key.
        _use_session(client, _forged_session(database_url, session))
        assert (await client.get("/dashboard")).status_code == 303

    body, _, mac = valid.partition(".")
    tampered = f"{body[:-2]}AA.{mac}"
    async with httpx.AsyncClient(base_url=dashboard.url) as client:
        _use_session(client, tampered)
        response = await client.get("/dashboard")
        assert response.status_code == 303
        assert response.headers["location"] == "/dashboard/login"


async def test_a_session_lasts_twelve_hours_from_sign_in(
    dashboard: Dashboard, customer: Customer, database_url: str
) -> None:
    async with httpx.AsyncClient(base_url=dashboard.url) as client:
        await _sign_in(client, customer.key)
        keys = (await client.get("/dashboard/keys")).text
    key_id = re.search(r'data-key-id="([^"]+)"', keys)
    assert key_id
    fresh = {"a": customer.id, "k": key_id.group(1), "t": int(time.time()) - 11 * 3600}
    stale = {**fresh, "t": int(time.time()) - 12 * 3600 - 5}
    async with httpx.AsyncClient(base_url=dashboard.url) as client:
        # Signed with the secret derived from the admin token, as every instance derives it.
        _use_session(client, _forged_session(database_url, fresh))
        assert (await client.get("/dashboard")).status_code == 200
        _use_session(client, _forged_session(database_url, stale))
        response = await client.get("/dashboard")
        assert response.status_code == 303
        login = await client.get(response.headers["location"])
        assert "Your session expired" in login.text


@pytest.mark.parametrize(
    "target",
    ["https://evil.example/", "//evil.example/dashboard", "/dashboardx", "/admin/accounts"],
)
async def test_next_never_leaves_the_dashboard(
    dashboard: Dashboard, customer: Customer, target: str
) -> None:
    async with httpx.AsyncClient(base_url=dashboard.url) as client:
        response = await _sign_in(client, customer.key, next=target)
    assert response.status_code == 303
    assert response.headers["location"] == "/dashboard"


async def test_unknown_pages_and_the_status_endpoint_without_a_session(
    dashboard: Dashboard,
) -> None:
    async with httpx.AsyncClient(base_url=dashboard.url) as client:
        missing = await client.get("/dashboard/no/such/page")
        assert missing.status_code == 404
        assert "Page not found" in missing.text
        status = await client.get("/dashboard/topup/status?session_id=cs_x")
        assert status.status_code == 401
        assert status.json() == {"signed_in": False}
        page = await client.get("/dashboard/usage?month=2026-05")
        assert page.status_code == 303
        assert page.headers["location"] == (
            "/dashboard/login?next=%2Fdashboard%2Fusage%3Fmonth%3D2026-05"
        )


async def test_top_up_is_unavailable_without_stripe(gateways: Gateways) -> None:
    plain = gateways.get()  # no STRIPE_API_KEY
    async with httpx.AsyncClient(
        base_url=plain.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    ) as admin:
        _, key = await new_account_with_key(admin, credit="5.00")
    async with httpx.AsyncClient(base_url=plain.url) as client:
        await _sign_in(client, key)
        page = await client.get("/dashboard/topup")
        assert page.status_code == 200
        assert "Top-up is unavailable" in page.text
        token = TOKEN_RE.search(page.text)
        assert token
        refused = await client.post(
            "/dashboard/topup", data={"amount": "20", "_csrf_token": token.group(1)}
        )
        assert refused.status_code == 503
        assert "STRIPE_API_KEY is not set" in refused.text


async def test_a_malformed_month_is_explained(dashboard: Dashboard, customer: Customer) -> None:
    async with httpx.AsyncClient(base_url=dashboard.url) as client:
        await _sign_in(client, customer.key)
        page = await client.get("/dashboard/usage?month=2026-13")
        assert page.status_code == 200
        assert "Months look like 2026-05" in page.text
        csv = await client.get("/dashboard/usage.csv?month=May")
        assert csv.status_code == 400
        assert csv.headers["content-type"].startswith("text/html")
        assert "Months look like 2026-05" in csv.text
        assert (await client.get("/dashboard/")).status_code == 200


async def test_a_key_name_with_a_nul_is_explained_and_no_key_is_made(
    dashboard: Dashboard, customer: Customer
) -> None:
    async with httpx.AsyncClient(base_url=dashboard.url) as client:
        await _sign_in(client, customer.key)
        page = await client.get("/dashboard/keys")
        token = TOKEN_RE.search(page.text)
        assert token, page.text
        before = page.text.count("Revoke")
        response = await client.post(
            "/dashboard/keys", data={"name": "ci\x00", "_csrf_token": token.group(1)}
        )
        assert response.status_code == 400
        assert "cannot contain the NUL character" in response.text
        assert (await client.get("/dashboard/keys")).text.count("Revoke") == before
