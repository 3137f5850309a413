"""`POST /v1/billing/checkout` against the fake Stripe: one Checkout Session with the right
amount, currency, account and saved-card settings; limits and configuration errors."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from tests.payments.apps import PUBLIC_URL, billing_app, start
from tests.payments.test_webhook import deliver
from tests.support import fake_stripe as stripe_fake
from tests.support.fake_stripe import FakeStripe
from tests.support.live import LiveServer


async def test_creates_one_checkout_session_with_inline_line_item(
    customer: tuple[dict[str, Any], httpx.AsyncClient], fake_stripe: FakeStripe
) -> None:
    account, client = customer
    response = await client.post("/v1/billing/checkout", json={"amount": "20.00"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"id", "url"}
    assert body["id"].startswith("cs_") and body["url"].startswith("https://")

    [created] = fake_stripe.calls("/v1/checkout/sessions")
    form = created.form
    assert form["mode"] == "payment"
    assert form["client_reference_id"] == account["id"]
    assert form["metadata[account_id]"] == account["id"]
    assert form["line_items[0][price_data][currency]"] == "eur"
    assert form["line_items[0][price_data][unit_amount]"] == "2000"
    assert form["line_items[0][price_data][product_data][name]"]
    assert form["line_items[0][quantity]"] == "1"
    assert not any(key.startswith("line_items[0][price]") for key in form)  # no Price object
    assert form["payment_intent_data[setup_future_usage]"] == "off_session"
    assert form["payment_intent_data[metadata][account_id]"] == account["id"]
    assert form["success_url"] == (
        f"{PUBLIC_URL}/dashboard/topup/return?session_id={{CHECKOUT_SESSION_ID}}"
    )
    assert form["cancel_url"].startswith(PUBLIC_URL)
    assert created.idempotency_key

    # SPEC 3.5's one call: Stripe creates the Customer during the first top-up.
    assert form["customer_creation"] == "always" and "customer" not in form
    assert fake_stripe.calls("/v1/customers") == []


async def test_later_top_ups_reuse_the_customer_of_a_completed_session(
    customer: tuple[dict[str, Any], httpx.AsyncClient], fake_stripe: FakeStripe, billing: LiveServer
) -> None:
    account, client = customer
    responses = await asyncio.gather(
        *(client.post("/v1/billing/checkout", json={"amount": "5"}) for _ in range(4))
    )
    assert [r.status_code for r in responses] == [200] * 4
    assert len({r.json()["id"] for r in responses}) == 4
    sessions = fake_stripe.calls("/v1/checkout/sessions")
    assert len({s.idempotency_key for s in sessions}) == 4  # each attempt a key of its own
    assert all(s.form["customer_creation"] == "always" for s in sessions)

    paid = stripe_fake.checkout_session(account["id"], 500)
    delivered = await deliver(billing, stripe_fake.event("checkout.session.completed", paid))
    assert delivered.json()["outcome"] == "credited"
    again = await client.post("/v1/billing/checkout", json={"amount": "5"})
    assert again.status_code == 200
    form = fake_stripe.calls("/v1/checkout/sessions")[-1].form
    assert form["customer"] == paid["customer"] and "customer_creation" not in form
    assert fake_stripe.calls("/v1/customers") == []


async def test_client_idempotency_key_returns_the_same_session(
    customer: tuple[dict[str, Any], httpx.AsyncClient],
) -> None:
    _, client = customer
    headers = {"Idempotency-Key": "topup-42"}
    first = await client.post("/v1/billing/checkout", json={"amount": "30.00"}, headers=headers)
    again = await client.post("/v1/billing/checkout", json={"amount": "30.00"}, headers=headers)
    assert first.json() == again.json()


@pytest.mark.parametrize("amount", ["4.99", "10000.01", "0", "-5", "20.001", "abc", 20.5])
async def test_amount_outside_the_limits_is_400(
    customer: tuple[dict[str, Any], httpx.AsyncClient], fake_stripe: FakeStripe, amount: object
) -> None:
    _, client = customer
    response = await client.post("/v1/billing/checkout", json={"amount": amount})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "amount"
    assert fake_stripe.calls("/v1/checkout/sessions") == []


async def test_limits_are_inclusive_and_the_message_names_them(
    customer: tuple[dict[str, Any], httpx.AsyncClient],
) -> None:
    _, client = customer
    assert (await client.post("/v1/billing/checkout", json={"amount": "5.00"})).status_code == 200
    ok = await client.post("/v1/billing/checkout", json={"amount": "10000"})
    assert ok.status_code == 200
    refused = await client.post("/v1/billing/checkout", json={"amount": "1.00"})
    assert "5.00" in refused.json()["error"]["message"]
    assert "10000.00" in refused.json()["error"]["message"]


async def test_requires_an_api_key(billing: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=billing.url) as anonymous:
        response = await anonymous.post("/v1/billing/checkout", json={"amount": "20.00"})
    assert response.status_code == 401


@pytest.fixture(scope="module")
def unconfigured(database_url: str) -> Any:
    server = start(billing_app(database_url, None))
    yield server
    server.stop()


async def test_without_stripe_top_up_is_503_with_a_clear_message(
    unconfigured: LiveServer, billing_admin: httpx.AsyncClient
) -> None:
    from tests.conftest import new_account_with_key

    _, key = await new_account_with_key(billing_admin)
    async with httpx.AsyncClient(
        base_url=unconfigured.url, headers={"Authorization": f"Bearer {key}"}
    ) as client:
        response = await client.post("/v1/billing/checkout", json={"amount": "20.00"})
        webhook = await client.post("/webhooks/stripe", content=b"{}")
    assert response.status_code == 503
    assert "STRIPE_API_KEY" in response.json()["error"]["message"]
    assert webhook.status_code == 503
