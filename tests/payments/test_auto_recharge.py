"""Auto-recharge: settings API, one charge per crossing under parallel triggers, declines and
back-off, the hourly cap, and resuming an attempt Stripe never answered."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.engine import create_sessionmaker
from app.metering.schemas import Settlement
from app.metering.writer import UsageWriter
from app.payments.auto_recharge import AutoRecharger
from app.payments.config import BillingConfig
from app.payments.stripe_api import StripeGateway
from tests.conftest import ADMIN_TOKEN, new_account_with_key
from tests.payments.apps import billing_app, start
from tests.payments.test_webhook import account_view, deliver, ledger
from tests.support import fake_stripe as stripe_fake
from tests.support.events import usage_event
from tests.support.fake_stripe import FakeStripe
from tests.support.live import LiveServer
from tests.support.upstream import FakeUpstream

Customer = tuple[dict[str, Any], httpx.AsyncClient]


async def save_card(
    billing: LiveServer,
    client: httpx.AsyncClient,
    account: dict[str, Any],
    payment_method: str = "pm_card_visa",
    *,
    credit_minor: int = 2000,
) -> str:
    """A Checkout top-up as Stripe reports it: the session (credited) and its PaymentIntent
    (which saved the card for off-session use). Returns the Customer Stripe made."""
    response = await client.post("/v1/billing/checkout", json={"amount": "20.00"})
    assert response.status_code == 200
    session = stripe_fake.checkout_session(account["id"], credit_minor)
    intent = stripe_fake.payment_intent(
        account["id"],
        credit_minor,
        purpose="topup",
        customer=session["customer"],
        payment_method=payment_method,
        intent_id=session["payment_intent"],
    )
    assert (
        await deliver(billing, stripe_fake.event("checkout.session.completed", session))
    ).json()["outcome"] == "credited"
    saved = await deliver(billing, stripe_fake.event("payment_intent.succeeded", intent))
    assert saved.json()["outcome"] == "card_saved"
    return str(session["customer"])


async def spend(engine: AsyncEngine, account_id: str, cost: str) -> None:
    """Usage settled through the real writer, as a proxied request would be."""
    writer = UsageWriter(engine)
    writer.start()
    try:
        event = usage_event(uuid.UUID(account_id), cost)
        await writer.settle(Settlement(event.account_id, None, event))
    finally:
        await writer.close()


def recharger(engine: AsyncEngine, fake: FakeStripe, **config: Any) -> AutoRecharger:
    return AutoRecharger(
        create_sessionmaker(engine),
        StripeGateway(fake.api_key, api_base=fake.url),
        BillingConfig(**config),
    )


async def enable(client: httpx.AsyncClient, threshold: str, amount: str) -> dict[str, Any]:
    response = await client.post(
        "/v1/billing/auto_recharge",
        json={"enabled": True, "threshold": threshold, "amount": amount},
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_settings_shape_and_validation(
    billing: LiveServer, customer: Customer, fake_stripe: FakeStripe
) -> None:
    account, client = customer
    initial = (await client.get("/v1/billing/auto_recharge")).json()
    assert initial == {
        "object": "auto_recharge",
        "enabled": False,
        "threshold": None,
        "amount": None,
        "currency": "EUR",
        "payment_method_saved": False,
        "retry_after": None,
        "last_attempt": None,
    }
    no_card = await client.post(
        "/v1/billing/auto_recharge", json={"enabled": True, "threshold": "5", "amount": "20"}
    )
    assert no_card.status_code == 400
    assert no_card.json()["error"]["code"] == "payment_method_required"

    await save_card(billing, client, account)
    for body, param in (
        ({"enabled": True, "amount": "20"}, "threshold"),
        ({"enabled": True, "threshold": "5"}, "amount"),
        ({"enabled": True, "threshold": "-1", "amount": "20"}, "threshold"),
        ({"enabled": True, "threshold": "5", "amount": "2"}, "amount"),
        ({"enabled": True, "threshold": "5", "amount": "20000"}, "amount"),
    ):
        response = await client.post("/v1/billing/auto_recharge", json=body)
        assert response.status_code == 400, body
        assert response.json()["error"]["param"] == param
    unknown = await client.post("/v1/billing/auto_recharge", json={"enabled": True, "x": 1})
    assert unknown.status_code == 400

    view = await enable(client, "5.00", "20.00")
    assert view["enabled"] is True
    assert (view["threshold"], view["amount"], view["payment_method_saved"]) == (
        "5.00",
        "20.00",
        True,
    )
    off = await client.post("/v1/billing/auto_recharge", json={"enabled": False})
    assert off.json()["enabled"] is False
    assert off.json()["threshold"] == "5.00"  # kept for when it is enabled again


async def test_the_card_event_may_come_before_its_session_event(
    billing: LiveServer, customer: Customer, fake_stripe: FakeStripe
) -> None:
    """Stripe does not order events: the saved card (and its Customer) are kept either way,
    and the next top-up reuses that Customer."""
    account, client = customer
    session = stripe_fake.checkout_session(account["id"], 2000)
    intent = stripe_fake.payment_intent(
        account["id"],
        2000,
        purpose="topup",
        customer=session["customer"],
        payment_method="pm_card_visa",
        intent_id=session["payment_intent"],
    )
    saved = await deliver(billing, stripe_fake.event("payment_intent.succeeded", intent))
    assert saved.json()["outcome"] == "card_saved"
    credited = await deliver(billing, stripe_fake.event("checkout.session.completed", session))
    assert credited.json()["outcome"] == "credited"
    view = await enable(client, "5.00", "20.00")
    assert view["payment_method_saved"] is True
    assert (await client.post("/v1/billing/checkout", json={"amount": "5"})).status_code == 200
    assert fake_stripe.calls("/v1/checkout/sessions")[-1].form["customer"] == session["customer"]


async def test_parallel_triggers_charge_once_when_the_balance_crosses_the_threshold(
    billing: LiveServer, customer: Customer, fake_stripe: FakeStripe, clean_db: AsyncEngine
) -> None:
    account, client = customer
    customer_id = await save_card(billing, client, account)  # €20.00
    await enable(client, "10.00", "25.00")
    assert fake_stripe.calls("/v1/payment_intents") == []  # above the threshold

    await spend(clean_db, account["id"], "15")  # balance €5.00 < €10.00
    fake_stripe.intent_delay = 0.2  # keep the first charge in flight while the others decide
    worker = recharger(clean_db, fake_stripe)
    outcomes = await asyncio.gather(
        *(worker.maybe_recharge(uuid.UUID(account["id"])) for _ in range(20))
    )
    worker.notify([uuid.UUID(account["id"])] * 5)
    await worker.close()

    assert outcomes.count("credited") == 1
    assert outcomes.count(None) == 19
    [charge] = fake_stripe.calls("/v1/payment_intents")
    form = charge.form
    assert (form["amount"], form["currency"]) == ("2500", "eur")
    assert (form["off_session"], form["confirm"]) == ("true", "true")
    assert form["payment_method"] == "pm_card_visa"
    assert form["customer"] == customer_id
    assert form["metadata[account_id]"] == account["id"]
    assert form["metadata[purpose]"] == "auto_recharge"
    assert charge.idempotency_key == f"tollgate-recharge-{form['metadata[attempt_id]']}"
    assert (await account_view(client))["balance"] == "30.00"

    # Stripe's webhook for the same PaymentIntent credits nothing more.
    intent = fake_stripe.objects[charge_id(fake_stripe)]
    again = await deliver(billing, stripe_fake.event("payment_intent.succeeded", intent))
    assert again.json()["outcome"] == "already_credited"
    purchases = [e for e in await ledger(clean_db, account["id"]) if e.kind == "purchase"]
    assert [e.amount for e in purchases] == [Decimal("20"), Decimal("25")]
    view = (await client.get("/v1/billing/auto_recharge")).json()
    assert view["last_attempt"]["status"] == "succeeded"
    assert view["last_attempt"]["amount"] == "25.00"


def charge_id(fake: FakeStripe) -> str:
    return next(k for k, v in fake.objects.items() if v["object"] == "payment_intent")


async def test_enabling_below_the_threshold_recharges_at_once(
    billing: LiveServer, customer: Customer, fake_stripe: FakeStripe
) -> None:
    account, client = customer
    await save_card(billing, client, account, credit_minor=500)  # €5.00
    await enable(client, "10.00", "50.00")
    for _ in range(100):
        if (await account_view(client))["balance"] == "55.00":
            break
        await asyncio.sleep(0.05)
    assert (await account_view(client))["balance"] == "55.00"
    assert len(fake_stripe.calls("/v1/payment_intents")) == 1


async def test_decline_backs_off_and_is_counted_once(
    billing: LiveServer, customer: Customer, fake_stripe: FakeStripe, clean_db: AsyncEngine
) -> None:
    account, client = customer
    await save_card(billing, client, account, "pm_card_chargeDeclined")
    await client.post(
        "/v1/billing/auto_recharge", json={"enabled": False, "threshold": "30", "amount": "10"}
    )
    async with clean_db.begin() as connection:
        await connection.execute(
            text("UPDATE auto_recharge_settings SET enabled = true WHERE account_id = :id"),
            {"id": account["id"]},
        )
    worker = recharger(clean_db, fake_stripe)
    account_id = uuid.UUID(account["id"])
    assert await worker.maybe_recharge(account_id) == "recharge_failed"
    assert await worker.maybe_recharge(account_id) is None  # backing off
    assert len(fake_stripe.calls("/v1/payment_intents")) == 1

    view = (await client.get("/v1/billing/auto_recharge")).json()
    assert view["last_attempt"]["status"] == "failed"
    assert "declined" in view["last_attempt"]["error"]
    retry_after = datetime.fromisoformat(view["retry_after"])
    assert timedelta(minutes=55) < retry_after - datetime.now(UTC) <= timedelta(hours=1)

    # Stripe's payment_failed event for the same PaymentIntent does not back off twice.
    intent = fake_stripe.objects[charge_id(fake_stripe)]
    failed = await deliver(billing, stripe_fake.event("payment_intent.payment_failed", intent))
    assert failed.json()["outcome"] == "already_finished"
    async with clean_db.connect() as connection:
        failures = await connection.scalar(
            text("SELECT failures FROM auto_recharge_settings WHERE account_id = :id"),
            {"id": account["id"]},
        )
    assert failures == 1
    await worker.close()


async def test_at_most_three_charges_per_hour(
    billing: LiveServer, customer: Customer, fake_stripe: FakeStripe, clean_db: AsyncEngine
) -> None:
    account, client = customer
    await save_card(billing, client, account, credit_minor=500)
    await client.post(
        "/v1/billing/auto_recharge", json={"enabled": False, "threshold": "100", "amount": "5"}
    )
    async with clean_db.begin() as connection:
        await connection.execute(
            text("UPDATE auto_recharge_settings SET enabled = true WHERE account_id = :id"),
            {"id": account["id"]},
        )
    worker = recharger(clean_db, fake_stripe)
    outcomes = [await worker.maybe_recharge(uuid.UUID(account["id"])) for _ in range(5)]
    assert outcomes == ["credited", "credited", "credited", None, None]
    assert (await account_view(client))["balance"] == "20.00"
    await worker.close()


async def test_an_unanswered_attempt_is_resumed_with_the_same_idempotency_key(
    billing: LiveServer, customer: Customer, fake_stripe: FakeStripe, clean_db: AsyncEngine
) -> None:
    account, client = customer
    await save_card(billing, client, account, credit_minor=500)
    await enable(client, "1.00", "10.00")
    await spend(clean_db, account["id"], "4.50")  # €0.50 < €1.00
    # Stripe unreachable: the attempt stays pending, and nothing else may start meanwhile.
    offline = AutoRecharger(
        create_sessionmaker(clean_db),
        StripeGateway(fake_stripe.api_key, api_base="http://127.0.0.1:9", max_network_retries=0),
        BillingConfig(),
    )
    assert await offline.maybe_recharge(uuid.UUID(account["id"])) == "pending"
    assert await offline.maybe_recharge(uuid.UUID(account["id"])) is None

    worker = recharger(clean_db, fake_stripe, recharge_stale_after=timedelta(0))
    assert await worker.run_due() == 1
    assert await worker.run_due() == 0
    [charge] = fake_stripe.calls("/v1/payment_intents")
    async with clean_db.connect() as connection:
        attempt = (
            await connection.execute(
                text("SELECT id, status FROM recharge_attempts WHERE account_id = :id"),
                {"id": account["id"]},
            )
        ).one()
    assert attempt.status == "succeeded"
    assert charge.idempotency_key == f"tollgate-recharge-{attempt.id}"
    assert (await account_view(client))["balance"] == "10.50"


async def test_proxied_usage_below_the_threshold_triggers_a_recharge(
    database_url: str, fake_stripe: FakeStripe, clean_db: AsyncEngine
) -> None:
    """Wiring end to end: a request through the gateway settles, the usage writer tells the
    auto-recharger, and the charge happens without any job or manual trigger."""
    upstream = FakeUpstream().start()
    server = start(billing_app(database_url, fake_stripe, UPSTREAM_BASE_URL=upstream.url))
    fake_stripe.reset()
    try:
        async with httpx.AsyncClient(
            base_url=server.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30
        ) as admin:
            account, key = await new_account_with_key(admin)
            async with httpx.AsyncClient(
                base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=30
            ) as client:
                await save_card(server, client, account, credit_minor=1000)
                await enable(client, "10.00", "20.00")  # the balance is €10.00: not below
                assert fake_stripe.calls("/v1/payment_intents") == []
                reply = await client.post(
                    "/v1/chat/completions",
                    json={"model": "llama-3.1-8b", "messages": [{"role": "user", "content": "Hi"}]},
                )
                assert reply.status_code == 200, reply.text
                for _ in range(100):
                    if fake_stripe.calls("/v1/payment_intents"):
                        break
                    await asyncio.sleep(0.05)
                [charge] = fake_stripe.calls("/v1/payment_intents")
                assert charge.form["amount"] == "2000"
                for _ in range(100):  # credited from Stripe's answer, just after the call
                    balance = Decimal((await account_view(client))["balance"])
                    if balance > 20:
                        break
                    await asyncio.sleep(0.05)
                assert Decimal("29.99") < balance < Decimal("30.00")
    finally:
        server.stop()
        upstream.stop()
