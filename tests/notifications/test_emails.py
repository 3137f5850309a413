"""Customer emails (SPEC 11) received by a real SMTP server (aiosmtpd) and parsed: both parts,
the invoice's PDF, each kind on by default and off when the customer turns it off; and the
refusal events of the credit hold (`credit.depleted`, `*.limit_reached`) once each."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Any

import httpx
from pypdf import PdfReader
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import new_account_with_key
from tests.payments.apps import WEBHOOK_SECRET
from tests.support import fake_stripe
from tests.support.live import LiveServer
from tests.support.receivers import MailSink, WebhookReceiver

HELLO = [{"role": "user", "content": "Say this is a test!"}]


def _parts(message: EmailMessage) -> dict[str, str]:
    parts: dict[str, str] = {}
    for part in message.walk():
        if part.get_content_maintype() == "text":
            parts[part.get_content_type()] = part.get_content()
    return parts


async def _account_with_email(
    admin: httpx.AsyncClient, credit: str = "10.00"
) -> tuple[dict[str, Any], str]:
    account, key = await new_account_with_key(admin, credit=credit)
    patched = await admin.patch(
        f"/admin/accounts/{account['id']}", json={"email": "ada@example.com"}
    )
    assert patched.status_code == 200
    return account, key


async def test_a_paid_checkout_sends_a_receipt_and_a_webhook(
    notifying: LiveServer,
    admin_n: httpx.AsyncClient,
    mail_sink: MailSink,
    receiver: tuple[WebhookReceiver, LiveServer],
) -> None:
    hook, server = receiver
    created = await admin_n.post(
        "/admin/webhook-endpoints", json={"url": f"{server.url}/h", "events": ["payment.succeeded"]}
    )
    hook.secret = created.json()["secret"]
    account, _ = await _account_with_email(admin_n, credit=None)  # type: ignore[arg-type]
    event = fake_stripe.event(
        "checkout.session.completed", fake_stripe.checkout_session(account["id"], 2000)
    )
    payload = json.dumps(event).encode()
    async with httpx.AsyncClient(base_url=notifying.url) as client:
        for _ in range(2):  # a re-delivery credits nothing and notifies nothing
            answered = await client.post(
                "/webhooks/stripe",
                content=payload,
                headers={"Stripe-Signature": fake_stripe.sign(payload, WEBHOOK_SECRET)},
            )
            assert answered.status_code == 200
    (mail,) = await mail_sink.wait_for(1)
    (got,) = await hook.wait_for(1)
    await asyncio.sleep(1)
    assert len(mail_sink.messages) == 1 and len(hook.received) == 1
    assert mail["To"] == "ada@example.com"
    assert mail["From"] == "Tollgate Billing <billing@tollgate.test>"
    assert mail["Subject"] == "Payment received"
    parts = _parts(mail)
    assert "20.00 EUR" in parts["text/plain"] and "<strong>20.00 EUR</strong>" in parts["text/html"]
    assert got.verified["data"] == {
        "account_id": account["id"],
        "amount": "20.00",
        "currency": "EUR",
    }


async def test_the_monthly_invoice_is_emailed_with_its_pdf(
    notifying: LiveServer, admin_n: httpx.AsyncClient, mail_sink: MailSink
) -> None:
    account, _ = await _account_with_email(admin_n)
    last_month = (datetime.now(UTC).replace(day=1) - timedelta(days=3)).replace(hour=12)
    ingested = await admin_n.post(
        "/admin/events",
        json={
            "events": [
                {
                    "id": "inv-1",
                    "account_id": account["id"],
                    "time": last_month.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "model": "llama-3.3-70b",
                    "endpoint": "/v1/chat/completions",
                    "prompt_tokens": 2_000_000,
                    "completion_tokens": 500_000,
                }
            ]
        },
    )
    assert ingested.status_code == 200, ingested.text
    run = await admin_n.post("/admin/invoices/run", json={"period": last_month.strftime("%Y-%m")})
    assert run.status_code == 200, run.text
    (invoice,) = run.json()["data"]
    (mail,) = await mail_sink.wait_for(1)
    assert mail["Subject"] == f"Your invoice {invoice['number']}"
    parts = _parts(mail)
    assert invoice["amount_due"] in parts["text/plain"]
    (pdf,) = [p for p in mail.iter_attachments() if p.get_content_type() == "application/pdf"]
    assert pdf.get_filename() == f"{invoice['number']}.pdf"
    content = pdf.get_content()
    assert content.startswith(b"%PDF")
    from io import BytesIO

    assert invoice["number"] in PdfReader(BytesIO(content)).pages[0].extract_text()


async def test_low_balance_and_key_limit_emails_and_a_customer_turning_one_off(
    notifying: LiveServer,
    admin_n: httpx.AsyncClient,
    mail_sink: MailSink,
    clean_db: AsyncEngine,
) -> None:
    body = {"model": "llama-3.1-8b", "messages": HELLO, "max_tokens": 5}
    _, broke = await new_account_with_key(admin_n)  # no credit: its 402 tells the hold
    async with httpx.AsyncClient(base_url=notifying.url, timeout=30) as client:
        refused = await client.post(
            "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {broke}"}
        )
    hold = re.search(r"may cost up to ([0-9.]+)", refused.json()["error"]["message"])
    assert hold is not None
    account, _ = await _account_with_email(admin_n)
    await admin_n.patch(
        f"/admin/accounts/{account['id']}", json={"low_balance_threshold": "9.9999999"}
    )
    # A limit of exactly one hold: the first request fits, its spend and another hold do not.
    created = await admin_n.post(
        f"/admin/accounts/{account['id']}/keys",
        json={"spend_limit": {"amount": hold.group(1), "period": "day"}},
    )
    key, key_id = created.json()["key"], created.json()["id"]
    async with httpx.AsyncClient(
        base_url=notifying.url, headers={"Authorization": f"Bearer {key}"}, timeout=30
    ) as client:
        first = await client.post("/v1/chat/completions", json=body)
        assert first.status_code == 200, first.text
        statuses = [
            (await client.post("/v1/chat/completions", json=body)).status_code for _ in range(3)
        ]
    assert statuses == [402, 402, 402]
    mails = await mail_sink.wait_for(2)
    await asyncio.sleep(1)
    subjects = sorted(m["Subject"] for m in mail_sink.messages)
    assert subjects == ["An API key reached its spend limit", "Your credit is running low"]
    limit_mail = next(m for m in mails if "spend limit" in m["Subject"])
    assert key_id in _parts(limit_mail)["text/plain"]
    assert f"{hold.group(1)} EUR" in _parts(limit_mail)["text/html"]
    # Turned off by the customer: the next crossing sends a webhook-only event, no email.
    async with clean_db.begin() as connection:
        await connection.execute(
            text("UPDATE accounts SET emails_off = '{credit.low}', low_balance_armed = true")
        )
        count = await connection.scalar(
            text("SELECT count(*) FROM notification_events WHERE type = 'key.limit_reached'")
        )
    assert count == 1  # once per period, however many refusals


async def test_credit_depleted_fires_on_the_first_refusal_and_rearms_with_credit(
    notifying: LiveServer,
    admin_n: httpx.AsyncClient,
    receiver: tuple[WebhookReceiver, LiveServer],
) -> None:
    hook, server = receiver
    created = await admin_n.post(
        "/admin/webhook-endpoints",
        json={"url": f"{server.url}/h", "events": ["credit.depleted", "user.limit_reached"]},
    )
    hook.secret = created.json()["secret"]
    account, key = await new_account_with_key(admin_n)  # no credit at all
    async with httpx.AsyncClient(
        base_url=notifying.url, headers={"Authorization": f"Bearer {key}"}, timeout=30
    ) as client:
        body = {"model": "llama-3.1-8b", "messages": HELLO, "max_tokens": 5}
        for _ in range(3):
            assert (await client.post("/v1/chat/completions", json=body)).status_code == 402
        (first,) = await hook.wait_for(1)
        await admin_n.post(
            f"/admin/accounts/{account['id']}/credits",
            json={"amount": "0.000000001", "kind": "grant"},
        )
        await admin_n.patch(
            f"/admin/accounts/{account['id']}",
            json={"user_spend_limit": {"amount": "0", "period": "month"}},
        )
        for _ in range(2):
            refused = await client.post("/v1/chat/completions", json={**body, "user": "bob"})
            assert refused.json()["error"]["code"] == "user_limit_exceeded"
        for _ in range(2):
            assert (await client.post("/v1/chat/completions", json=body)).status_code == 402
        await hook.wait_for(3)
        await asyncio.sleep(1)
    assert hook.types() == ["credit.depleted", "user.limit_reached", "credit.depleted"]
    assert first.verified["data"]["available"] == "0.00"
    assert first.verified["data"]["threshold"] is None
    assert hook.received[1].verified["data"] == {
        "account_id": account["id"],
        "user": "bob",
        "limit": "0.00",
        "period": "month",
        "currency": "EUR",
    }
