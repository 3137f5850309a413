"""`POST /webhooks/stripe`: signed events, the inbox, exactly-once credits and reversals."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import timedelta
from decimal import Decimal
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.db.engine import create_sessionmaker
from app.payments import checkout
from app.payments.config import BillingConfig
from app.payments.inbox import retry_unprocessed_events
from tests.payments.apps import WEBHOOK_SECRET
from tests.support import fake_stripe as stripe_fake
from tests.support.live import LiveServer

ZERO = timedelta(0)


async def deliver(
    server: LiveServer,
    event: dict[str, Any],
    *,
    secret: str = WEBHOOK_SECRET,
    timestamp: int | None = None,
    signature: str | None = None,
) -> httpx.Response:
    payload = json.dumps(event, separators=(",", ":")).encode()
    header = signature if signature is not None else stripe_fake.sign(payload, secret, timestamp)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        return await client.post(
            "/webhooks/stripe",
            content=payload,
            headers={"Stripe-Signature": header, "Content-Type": "application/json"},
        )


async def ledger(engine: AsyncEngine, account_id: str) -> list[Any]:
    async with engine.connect() as connection:
        result = await connection.execute(
            text(
                "SELECT kind, amount, reference FROM ledger_entries "
                "WHERE account_id = :id ORDER BY created_at, reference"
            ),
            {"id": account_id},
        )
        return list(result)


async def account_view(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/v1/account")
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


async def test_paid_checkout_delivered_six_times_concurrently_credits_once(
    billing: LiveServer, customer: tuple[dict[str, Any], httpx.AsyncClient], clean_db: AsyncEngine
) -> None:
    account, client = customer
    event = stripe_fake.event(
        "checkout.session.completed", stripe_fake.checkout_session(account["id"], 2000)
    )
    responses = await asyncio.gather(*(deliver(billing, event) for _ in range(6)))
    receipts = [r.json() for r in responses]
    assert all(r.status_code == 200 for r in responses), receipts
    assert sum(r["outcome"] == "credited" for r in receipts) == 1, receipts
    assert sum(r["duplicate"] for r in receipts) == 5, receipts

    entries = await ledger(clean_db, account["id"])
    assert [(e.kind, e.amount) for e in entries] == [("purchase", Decimal("20"))]
    view = await account_view(client)
    assert view["balance"] == "20.00"
    assert view["total_purchased"] == "20.00"
    assert view["tier"]["name"] == "standard"  # the new tier applies from the next request

    async with clean_db.connect() as connection:
        stored = await connection.scalar(
            text("SELECT count(*) FROM stripe_events WHERE id = :id"), {"id": event["id"]}
        )
    assert stored == 1
    async with AsyncSession(clean_db) as session:
        account_id = uuid.UUID(account["id"])
        session_id = event["data"]["object"]["id"]
        assert await checkout.checkout_credited(session, account_id, session_id)
        assert not await checkout.checkout_credited(session, account_id, "cs_test_other")


async def test_same_session_under_other_event_ids_credits_nothing_more(
    billing: LiveServer, customer: tuple[dict[str, Any], httpx.AsyncClient], clean_db: AsyncEngine
) -> None:
    account, client = customer
    session = stripe_fake.checkout_session(account["id"], 2500)
    first = stripe_fake.event("checkout.session.completed", session)
    assert (await deliver(billing, first)).json()["outcome"] == "credited"
    # Re-sent as new events (another id, and the async-success type), some concurrently.
    others = [
        stripe_fake.event("checkout.session.completed", session),
        stripe_fake.event("checkout.session.async_payment_succeeded", session),
        stripe_fake.event("checkout.session.completed", session),
    ]
    responses = await asyncio.gather(*(deliver(billing, e) for e in others))
    assert [r.json()["outcome"] for r in responses] == ["already_credited"] * 3
    assert (await account_view(client))["balance"] == "25.00"
    assert len(await ledger(clean_db, account["id"])) == 1


async def test_async_payment_is_credited_when_it_succeeds_not_when_it_fails(
    billing: LiveServer, customer: tuple[dict[str, Any], httpx.AsyncClient], clean_db: AsyncEngine
) -> None:
    account, client = customer
    pending = stripe_fake.checkout_session(account["id"], 5000, payment_status="unpaid")
    completed = await deliver(billing, stripe_fake.event("checkout.session.completed", pending))
    assert completed.json()["outcome"] == "not_paid"
    failed = await deliver(
        billing, stripe_fake.event("checkout.session.async_payment_failed", pending)
    )
    assert failed.status_code == 200
    assert failed.json()["outcome"] == "payment_failed"
    assert await ledger(clean_db, account["id"]) == []

    other = stripe_fake.checkout_session(account["id"], 5000, payment_status="unpaid")
    await deliver(billing, stripe_fake.event("checkout.session.completed", other))
    paid = {**other, "payment_status": "paid"}
    succeeded = await deliver(
        billing, stripe_fake.event("checkout.session.async_payment_succeeded", paid)
    )
    assert succeeded.json()["outcome"] == "credited"
    assert (await account_view(client))["balance"] == "50.00"


async def test_bad_stale_or_missing_signatures_are_400_and_credit_nothing(
    billing: LiveServer, customer: tuple[dict[str, Any], httpx.AsyncClient], clean_db: AsyncEngine
) -> None:
    account, _ = customer
    event = stripe_fake.event(
        "checkout.session.completed", stripe_fake.checkout_session(account["id"], 2000)
    )
    wrong_secret = await deliver(billing, event, secret="whsec_someone_else")
    stale = await deliver(billing, event, timestamp=int(time.time()) - 301)
    missing = await deliver(billing, event, signature="")
    garbage = await deliver(billing, event, signature="t=abc,v1=def")
    for response in (wrong_secret, stale, missing, garbage):
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] == "invalid_signature"

    # A valid signature over different bytes (the body was altered) is refused too.
    payload = json.dumps(event).encode()
    header = stripe_fake.sign(payload, WEBHOOK_SECRET)
    async with httpx.AsyncClient(base_url=billing.url) as client:
        tampered = await client.post(
            "/webhooks/stripe",
            content=payload.replace(b"2000", b"9000"),
            headers={"Stripe-Signature": header},
        )
        not_utf8 = await client.post(
            "/webhooks/stripe",
            content=b"\xff\xfe" + payload,
            headers={"Stripe-Signature": stripe_fake.sign(b"\xff\xfe" + payload, WEBHOOK_SECRET)},
        )
    assert tampered.status_code == 400
    assert not_utf8.status_code == 400, not_utf8.text
    assert not_utf8.json()["error"]["code"] == "invalid_signature"

    assert await ledger(clean_db, account["id"]) == []
    async with clean_db.connect() as connection:
        assert await connection.scalar(text("SELECT count(*) FROM stripe_events")) == 0

    # Within the tolerance the same event is accepted.
    recent = await deliver(billing, event, timestamp=int(time.time()) - 240)
    assert recent.json()["outcome"] == "credited"


async def test_refund_lowers_total_purchased_and_the_tier(
    billing: LiveServer, customer: tuple[dict[str, Any], httpx.AsyncClient], clean_db: AsyncEngine
) -> None:
    account, client = customer
    session = stripe_fake.checkout_session(account["id"], 10_000)  # €100.00 → pro
    await deliver(billing, stripe_fake.event("checkout.session.completed", session))
    view = await account_view(client)
    assert (view["total_purchased"], view["tier"]["name"]) == ("100.00", "pro")

    pi = session["payment_intent"]
    partial = stripe_fake.event(
        "charge.refunded", stripe_fake.charge(pi, 10_000, refunded_minor=1_000)
    )
    responses = await asyncio.gather(*(deliver(billing, partial) for _ in range(3)))
    assert sorted(r.json()["outcome"] or "" for r in responses) == ["", "", "reversed"]
    view = await account_view(client)
    assert (view["balance"], view["total_purchased"]) == ("90.00", "90.00")
    assert view["tier"]["name"] == "standard"  # fell below the €100 threshold

    # A second partial refund arrives as the charge's new cumulative total; an old total
    # re-sent under a new event id reverses nothing.
    second = stripe_fake.charge(pi, 10_000, refunded_minor=1_500)
    assert (await deliver(billing, stripe_fake.event("charge.refunded", second))).json()[
        "outcome"
    ] == "reversed"
    old = stripe_fake.event("charge.refunded", stripe_fake.charge(pi, 10_000, refunded_minor=1_000))
    assert (await deliver(billing, old)).json()["outcome"] == "already_reversed"
    view = await account_view(client)
    assert (view["balance"], view["total_purchased"]) == ("85.00", "85.00")
    kinds = [(e.kind, e.amount) for e in await ledger(clean_db, account["id"])]
    assert kinds == [
        ("purchase", Decimal("100")),
        ("refund", Decimal("-10")),
        ("refund", Decimal("-5")),
    ]


async def test_dispute_reverses_the_disputed_amount_once(
    billing: LiveServer, customer: tuple[dict[str, Any], httpx.AsyncClient], clean_db: AsyncEngine
) -> None:
    account, client = customer
    session = stripe_fake.checkout_session(account["id"], 600)
    await deliver(billing, stripe_fake.event("checkout.session.completed", session))
    dispute = stripe_fake.event(
        "charge.dispute.created", stripe_fake.dispute(session["payment_intent"], 600)
    )
    assert (await deliver(billing, dispute)).json()["outcome"] == "reversed"
    again = stripe_fake.event("charge.dispute.created", dispute["data"]["object"])
    assert (await deliver(billing, again)).json()["outcome"] == "already_reversed"
    view = await account_view(client)
    assert (view["balance"], view["total_purchased"], view["tier"]["name"]) == (
        "0.00",
        "0.00",
        "free",
    )


async def test_a_refund_before_its_purchase_is_applied_once_the_purchase_is(
    billing: LiveServer, customer: tuple[dict[str, Any], httpx.AsyncClient], clean_db: AsyncEngine
) -> None:
    """Stripe does not order events: the refund waits (unprocessed, answered 200) and the
    retry job applies it after the purchase is credited."""
    account, client = customer
    session = stripe_fake.checkout_session(account["id"], 2000)
    refunded = stripe_fake.charge(session["payment_intent"], 2000, refunded_minor=500)
    early = await deliver(billing, stripe_fake.event("charge.refunded", refunded))
    assert early.status_code == 200 and early.json()["outcome"] == "waiting_for_payment"
    assert await ledger(clean_db, account["id"]) == []
    await deliver(billing, stripe_fake.event("checkout.session.completed", session))
    sessionmaker = create_sessionmaker(clean_db)
    assert await retry_unprocessed_events(sessionmaker, BillingConfig(), received_before=ZERO) == 1
    assert await retry_unprocessed_events(sessionmaker, BillingConfig(), received_before=ZERO) == 0
    view = await account_view(client)
    assert (view["balance"], view["total_purchased"]) == ("15.00", "15.00")


async def test_unknown_types_and_foreign_payments_are_acknowledged_and_ignored(
    billing: LiveServer, customer: tuple[dict[str, Any], httpx.AsyncClient], clean_db: AsyncEngine
) -> None:
    account, _ = customer
    unknown = await deliver(billing, stripe_fake.event("invoice.paid", {"id": "in_123"}))
    assert unknown.status_code == 200
    assert unknown.json()["outcome"] == "ignored"
    foreign = stripe_fake.charge("pi_not_ours", 1000, refunded_minor=1000)
    refund = stripe_fake.event("charge.refunded", foreign)
    assert (await deliver(billing, refund)).json()["outcome"] == "waiting_for_payment"
    # Kept for a day in case its purchase is still on the way, then acknowledged as foreign.
    async with clean_db.begin() as connection:
        await connection.execute(
            text("UPDATE stripe_events SET received_at = now() - interval '25 hours'")
        )
    assert await retry_unprocessed_events(create_sessionmaker(clean_db), BillingConfig()) == 1
    async with clean_db.connect() as connection:
        outcome = await connection.scalar(
            text("SELECT outcome FROM stripe_events WHERE id = :id"), {"id": refund["id"]}
        )
    assert outcome == "unknown_payment"
    stranger = stripe_fake.checkout_session(str(uuid.uuid4()), 2000)
    orphan = await deliver(billing, stripe_fake.event("checkout.session.completed", stranger))
    assert orphan.json()["outcome"] == "unknown_account"
    other_currency = stripe_fake.checkout_session(account["id"], 2000, currency="usd")
    usd = await deliver(billing, stripe_fake.event("checkout.session.completed", other_currency))
    assert usd.json()["outcome"] == "currency_mismatch"
    assert await ledger(clean_db, account["id"]) == []


async def test_a_signed_event_without_data_is_acknowledged_as_rejected(
    billing: LiveServer, clean_db: AsyncEngine
) -> None:
    """SPEC 4: stored as rejected and answered 2xx, so Stripe stops re-sending it (more cases
    in test_webhook_rejections)."""
    signed = await deliver(billing, {"id": "evt_1", "type": "checkout.session.completed"})
    assert signed.status_code == 200
    assert signed.json() == {
        "received": True,
        "id": "evt_1",
        "duplicate": False,
        "outcome": "rejected",
    }
    async with clean_db.connect() as connection:
        row = (
            await connection.execute(
                text("SELECT outcome, rejection FROM stripe_events WHERE id = 'evt_1'")
            )
        ).one()
    assert (row.outcome, row.rejection) == ("rejected", "data is missing")
