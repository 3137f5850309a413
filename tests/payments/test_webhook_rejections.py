"""`POST /webhooks/stripe` with signed events that no money may come from (SPEC 4): fields
missing, of the wrong type or out of range, text Postgres cannot hold. Each is stored as
rejected with its reason, answered 2xx (Stripe would otherwise retry it for days), never
retried, and changes nothing else. Also the signature's window into the future, and
cumulative refunds."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.engine import create_sessionmaker
from app.money import LEDGER_LIMIT
from app.payments.config import BillingConfig
from app.payments.inbox import retry_unprocessed_events
from tests.payments.apps import WEBHOOK_SECRET
from tests.payments.test_webhook import account_view, deliver, ledger
from tests.support import fake_stripe as stripe_fake
from tests.support.live import LiveServer

Customer = tuple[dict[str, Any], httpx.AsyncClient]
ZERO = timedelta(0)
BIGINT_MAX = 2**63 - 1


async def deliver_raw(
    server: LiveServer, payload: bytes, *, timestamp: int | None = None
) -> httpx.Response:
    """Exactly these bytes, signed as Stripe signs them."""
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        return await client.post(
            "/webhooks/stripe",
            content=payload,
            headers={
                "Stripe-Signature": stripe_fake.sign(payload, WEBHOOK_SECRET, timestamp),
                "Content-Type": "application/json",
            },
        )


async def stored_event(engine: AsyncEngine, event_id: str) -> Any:
    async with engine.connect() as connection:
        return (
            await connection.execute(
                text(
                    "SELECT id, type, payload, body, processed_at, outcome, rejection, attempts "
                    "FROM stripe_events WHERE id = :id"
                ),
                {"id": event_id},
            )
        ).one()


async def money_tables(engine: AsyncEngine) -> list[Any]:
    """Everything an event could change, apart from the inbox itself."""
    async with engine.connect() as connection:
        rows: list[Any] = []
        for query in (
            "SELECT id, balance, total_purchased FROM accounts ORDER BY id",
            "SELECT account_id, kind, amount, reference FROM ledger_entries ORDER BY reference",
            "SELECT account_id, payment_intent_id, amount_minor, refunded_minor "
            "FROM stripe_payments ORDER BY payment_intent_id",
            "SELECT account_id, customer_id, payment_method_id FROM stripe_customers "
            "ORDER BY account_id",
            "SELECT account_id, status FROM recharge_attempts ORDER BY id",
        ):
            rows.append(list(await connection.execute(text(query))))
        return rows


async def credited_payment(billing: LiveServer, account_id: str, amount_minor: int) -> str:
    """A Checkout top-up credited to the account; returns its PaymentIntent."""
    session = stripe_fake.checkout_session(account_id, amount_minor)
    credited = await deliver(billing, stripe_fake.event("checkout.session.completed", session))
    assert credited.json()["outcome"] == "credited", credited.text
    return str(session["payment_intent"])


def _checkout(account_id: str, pi: str, **changes: Any) -> dict[str, Any]:
    session = stripe_fake.checkout_session(account_id, 2000)
    for key, value in changes.items():
        if value is _MISSING:
            session.pop(key)
        else:
            session[key] = value
    return stripe_fake.event("checkout.session.completed", session)


def _changed(obj: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    obj = dict(obj)
    for key, value in changes.items():
        if value is _MISSING:
            obj.pop(key)
        else:
            obj[key] = value
    return obj


_MISSING = object()
_LONG = "cs_" + secrets.token_urlsafe(7500)  # random: Postgres cannot compress it small

# (name, event builder given (account id, credited PaymentIntent), a word the reason names)
Builder = Callable[[str, str], dict[str, Any]]
CASES: list[tuple[str, Builder, str]] = [
    ("amount 10**30", lambda a, pi: _checkout(a, pi, amount_total=10**30), "amount_total"),
    (
        "amount beyond the ledger",
        lambda a, pi: _checkout(a, pi, amount_total=int(LEDGER_LIMIT) * 100),
        "amount_total",
    ),
    ("amount beyond bigint", lambda a, pi: _checkout(a, pi, amount_total=2**63), "amount_total"),
    ("float amount", lambda a, pi: _checkout(a, pi, amount_total=20.5), "amount_total"),
    ("whole float amount", lambda a, pi: _checkout(a, pi, amount_total=2000.0), "amount_total"),
    ("NaN amount", lambda a, pi: _checkout(a, pi, amount_total=float("nan")), "amount_total"),
    ("Infinity amount", lambda a, pi: _checkout(a, pi, amount_total=float("inf")), "amount_total"),
    ("string amount", lambda a, pi: _checkout(a, pi, amount_total="2000"), "amount_total"),
    ("boolean amount", lambda a, pi: _checkout(a, pi, amount_total=True), "amount_total"),
    ("negative amount", lambda a, pi: _checkout(a, pi, amount_total=-2000), "amount_total"),
    ("missing amount", lambda a, pi: _checkout(a, pi, amount_total=_MISSING), "amount_total"),
    ("missing currency", lambda a, pi: _checkout(a, pi, currency=_MISSING), "currency"),
    ("numeric currency", lambda a, pi: _checkout(a, pi, currency=978), "currency"),
    ("long currency", lambda a, pi: _checkout(a, pi, currency="euros"), "currency"),
    ("missing payment_status", lambda a, pi: _checkout(a, pi, payment_status=_MISSING), "status"),
    ("session id not text", lambda a, pi: _checkout(a, pi, id=12345), "id"),
    ("payment_intent a list", lambda a, pi: _checkout(a, pi, payment_intent=["pi"]), "intent"),
    ("NUL in session id", lambda a, pi: _checkout(a, pi, id="cs_\x00"), "NUL"),
    # Ids go into unique indexes, whose entries cannot be that long.
    ("session id of 10,000 characters", lambda a, pi: _checkout(a, pi, id=_LONG), "longer"),
    (
        "payment_intent of 10,000 characters",
        lambda a, pi: _checkout(a, pi, payment_intent=_LONG),
        "longer",
    ),
    ("customer of 10,000 characters", lambda a, pi: _checkout(a, pi, customer=_LONG), "longer"),
    ("NUL in metadata", lambda a, pi: _checkout(a, pi, metadata={"note": "a\x00b"}), "NUL"),
    ("NUL in a key", lambda a, pi: _checkout(a, pi, metadata={"a\x00": "b"}), "NUL"),
    ("lone surrogate", lambda a, pi: _checkout(a, pi, customer="cus_\ud800"), "surrogate"),
    (
        "NUL in the event id",
        lambda a, pi: {**_checkout(a, pi), "id": "evt_\x00"},
        "NUL",
    ),
    ("event id missing", lambda a, pi: _changed(_checkout(a, pi), {"id": _MISSING}), "id"),
    ("event id a number", lambda a, pi: {**_checkout(a, pi), "id": 42}, "id"),
    ("type missing", lambda a, pi: _changed(_checkout(a, pi), {"type": _MISSING}), "type"),
    ("data.object missing", lambda a, pi: {**_checkout(a, pi), "data": {}}, "data.object"),
    ("data a string", lambda a, pi: {**_checkout(a, pi), "data": "x"}, "data"),
    (
        "negative dispute",
        lambda a, pi: stripe_fake.event("charge.dispute.created", stripe_fake.dispute(pi, -600)),
        "amount",
    ),
    (
        "zero dispute",
        lambda a, pi: stripe_fake.event("charge.dispute.created", stripe_fake.dispute(pi, 0)),
        "amount",
    ),
    (
        "dispute amount 10**30",
        lambda a, pi: stripe_fake.event("charge.dispute.created", stripe_fake.dispute(pi, 10**30)),
        "amount",
    ),
    (
        "dispute without a currency",
        lambda a, pi: stripe_fake.event(
            "charge.dispute.created", _changed(stripe_fake.dispute(pi, 600), {"currency": None})
        ),
        "currency",
    ),
    (
        "negative refund",
        lambda a, pi: stripe_fake.event(
            "charge.refunded", stripe_fake.charge(pi, 2000, refunded_minor=-500)
        ),
        "amount_refunded",
    ),
    (
        "refund as text",
        lambda a, pi: stripe_fake.event(
            "charge.refunded",
            _changed(stripe_fake.charge(pi, 2000, refunded_minor=0), {"amount_refunded": "500"}),
        ),
        "amount_refunded",
    ),
    (
        "refund 10**30",
        lambda a, pi: stripe_fake.event(
            "charge.refunded", stripe_fake.charge(pi, 2000, refunded_minor=10**30)
        ),
        "amount_refunded",
    ),
    (
        "refund list not a list",
        lambda a, pi: stripe_fake.event(
            "charge.refunded",
            _changed(stripe_fake.charge(pi, 2000, refunded_minor=500), {"refunds": "re_1"}),
        ),
        "refunds",
    ),
    (
        "card saved at year 10**30",
        lambda a, pi: stripe_fake.event(
            "payment_intent.succeeded",
            stripe_fake.payment_intent(
                a, 2000, purpose="topup", customer="cus_1", payment_method="pm_1", created=10**30
            ),
        ),
        "created",
    ),
    (
        "metadata a list",
        lambda a, pi: stripe_fake.event(
            "payment_intent.succeeded",
            _changed(stripe_fake.payment_intent(a, 2000, purpose="topup"), {"metadata": ["x"]}),
        ),
        "metadata",
    ),
    (
        "recharge of 10**30",
        lambda a, pi: stripe_fake.event(
            "payment_intent.succeeded",
            stripe_fake.payment_intent(a, 10**30, purpose="auto_recharge"),
        ),
        "amount",
    ),
    (
        "decline without an id",
        lambda a, pi: stripe_fake.event(
            "payment_intent.payment_failed",
            _changed(
                stripe_fake.payment_intent(a, 2000, purpose="auto_recharge", status="failed"),
                {"id": None},
            ),
        ),
        "id",
    ),
]


@pytest.mark.parametrize(("build", "names"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_a_malformed_signed_event_is_stored_rejected_answered_2xx_and_never_retried(
    billing: LiveServer,
    customer: Customer,
    clean_db: AsyncEngine,
    build: Builder,
    names: str,
) -> None:
    account, client = customer
    pi = await credited_payment(billing, account["id"], 2000)
    before = await money_tables(clean_db)
    # Python's json writes (and reads) NaN and Infinity, and NUL as \u0000: all as Stripe
    # could sign them.
    payload = json.dumps(build(account["id"], pi)).encode()

    response = await deliver_raw(billing, payload)
    assert response.status_code == 200, response.text
    receipt = response.json()
    assert receipt["received"] is True
    assert receipt["outcome"] == "rejected", receipt
    assert receipt["duplicate"] is False
    assert isinstance(receipt["id"], str) and receipt["id"]

    row = await stored_event(clean_db, receipt["id"])
    assert row.outcome == "rejected"
    assert row.processed_at is not None  # done with: the retry job never picks it up
    assert row.rejection and names.lower() in row.rejection.lower(), row.rejection
    assert "\x00" not in row.id
    if row.payload is None:  # text Postgres' jsonb cannot hold: the exact bytes are kept
        assert bytes(row.body) == payload
    assert await money_tables(clean_db) == before

    sessionmaker = create_sessionmaker(clean_db)
    assert await retry_unprocessed_events(sessionmaker, BillingConfig(), received_before=ZERO) == 0
    again = await deliver_raw(billing, payload)
    assert again.status_code == 200, again.text
    assert again.json()["id"] == receipt["id"] and again.json()["duplicate"] is True
    assert await retry_unprocessed_events(sessionmaker, BillingConfig(), received_before=ZERO) == 0
    after = await stored_event(clean_db, receipt["id"])
    assert (after.outcome, after.rejection, after.attempts) == (
        row.outcome,
        row.rejection,
        row.attempts,
    )
    assert await money_tables(clean_db) == before
    assert (await account_view(client))["balance"] == "20.00"


def _nested_event(depth: int) -> bytes:
    """An event whose metadata nests `depth` arrays deep."""
    event = stripe_fake.event("invoice.paid", {"id": "in_1", "metadata": {"x": "X"}})
    return json.dumps(event).encode().replace(b'"X"', b"[" * depth + b"]" * depth)


@pytest.mark.parametrize(
    "body",
    [
        b"[1, 2, 3]",
        b'"evt"',
        b"not json at all",
        b"[" * 50_000 + b"]" * 50_000,
        b"1" * 5000,
        _nested_event(100),
        # Read by json.loads, but too deep to write back as jsonb further down the stack.
        *(_nested_event(depth) for depth in range(950, 970, 2)),
    ],
    ids=[
        "array",
        "string",
        "not JSON",
        "nested 50k deep",
        "a 5000-digit number",
        "event nested 100 deep",
        *(f"event nested {depth} deep" for depth in range(950, 970, 2)),
    ],
)
async def test_a_signed_body_that_is_no_event_is_stored_rejected(
    billing: LiveServer, clean_db: AsyncEngine, body: bytes
) -> None:
    response = await deliver_raw(billing, body)
    assert response.status_code == 200, response.text
    assert response.json()["outcome"] == "rejected"
    row = await stored_event(clean_db, response.json()["id"])
    assert row.payload is None and bytes(row.body) == body
    assert row.rejection
    again = await deliver_raw(billing, body)
    assert again.json()["duplicate"] is True and again.json()["id"] == row.id


async def test_a_dispute_with_a_negative_amount_takes_nothing_back(
    billing: LiveServer, customer: Customer, clean_db: AsyncEngine
) -> None:
    """It used to be written as a 0.00 refund (negative amounts were read as 0)."""
    account, client = customer
    pi = await credited_payment(billing, account["id"], 600)
    dispute = stripe_fake.event("charge.dispute.created", stripe_fake.dispute(pi, -600))
    response = await deliver(billing, dispute)
    assert response.status_code == 200
    assert response.json()["outcome"] == "rejected"
    entries = [(e.kind, e.amount) for e in await ledger(clean_db, account["id"])]
    assert entries == [("purchase", Decimal("6"))]
    assert (await account_view(client))["balance"] == "6.00"
    row = await stored_event(clean_db, dispute["id"])
    assert "amount" in row.rejection and row.payload is not None


async def test_a_signature_from_the_future_is_refused_like_a_stale_one(
    billing: LiveServer, customer: Customer, clean_db: AsyncEngine
) -> None:
    account, _ = customer
    event = stripe_fake.event(
        "checkout.session.completed", stripe_fake.checkout_session(account["id"], 2000)
    )
    # (Not +301: a loaded machine may take a second or more to deliver it.)
    for timestamp in (int(time.time()) + 330, int(time.time()) + 86_400, 10**12):
        response = await deliver(billing, event, timestamp=timestamp)
        assert response.status_code == 400, (timestamp, response.text)
        assert response.json()["error"]["code"] == "invalid_signature"
    async with clean_db.connect() as connection:
        assert await connection.scalar(text("SELECT count(*) FROM stripe_events")) == 0
    # A clock a little ahead, within the tolerance, is fine; the timestamp is read as the SDK
    # reads it (`t=<time>=anything` is its <time>).
    payload = json.dumps(event, separators=(",", ":")).encode()
    header = stripe_fake.sign(payload, WEBHOOK_SECRET, int(time.time()) + 240)
    t, _, v1 = header.partition(",")
    ahead = await deliver(billing, event, signature=f"{t}=x,{v1}")
    assert ahead.status_code == 200, ahead.text
    assert ahead.json()["outcome"] == "credited"


@pytest.mark.parametrize("order", ["in order", "newest first", "concurrently"])
async def test_cumulative_refunds_take_back_the_latest_total_once(
    billing: LiveServer, customer: Customer, clean_db: AsyncEngine, order: str
) -> None:
    """A €100 then a €120 total refund of one charge take back €120 in all."""
    account, client = customer
    pi = await credited_payment(billing, account["id"], 15_000)
    first = stripe_fake.event(
        "charge.refunded", stripe_fake.charge(pi, 15_000, refunded_minor=10_000)
    )
    second = stripe_fake.event(
        "charge.refunded", stripe_fake.charge(pi, 15_000, refunded_minor=12_000)
    )
    if order == "in order":
        outcomes = [(await deliver(billing, e)).json()["outcome"] for e in (first, second)]
        assert outcomes == ["reversed", "reversed"]
    elif order == "newest first":
        outcomes = [(await deliver(billing, e)).json()["outcome"] for e in (second, first)]
        assert outcomes == ["reversed", "already_reversed"]
    else:
        responses = await asyncio.gather(
            *(deliver(billing, e) for e in (first, second, first, second))
        )
        assert all(r.status_code == 200 for r in responses)
    # Re-deliveries and re-sends under new ids take nothing more back.
    await deliver(billing, first)
    again = stripe_fake.event("charge.refunded", second["data"]["object"])
    assert (await deliver(billing, again)).json()["outcome"] == "already_reversed"

    refunds = [e.amount for e in await ledger(clean_db, account["id"]) if e.kind == "refund"]
    assert sum(refunds) == Decimal("-120")
    view = await account_view(client)
    assert (view["balance"], view["total_purchased"]) == ("30.00", "30.00")
