"""The notifications page (SPEC 9, 11): the email address, the low-balance threshold and which
emails are sent, saved and read back from the database; refused input changes nothing; "email
is off" without SMTP; the recent notifications with what became of their emails. Over plain
HTTP, in headless Chromium, and against a real SMTP server (aiosmtpd)."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from playwright.async_api import Page, expect
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from app.dashboard import service
from app.db.engine import unit_of_work
from app.db.models import Account, NotificationDelivery
from app.errors import InvalidRequest
from app.notifications import service as notifications
from app.notifications.schemas import EMAIL_SUBJECTS, EventType
from app.notifications.service import RecentEvent
from tests.conftest import ADMIN_TOKEN, new_account_with_key
from tests.dashboard.conftest import Customer, Dashboard, sign_in, start_dashboard
from tests.dashboard.seed import ingest
from tests.support.receivers import MailSink

TOKEN_RE = re.compile(r'name="_csrf_token" value="([^"]+)"')
ALL_KINDS = sorted(t.value for t in EMAIL_SUBJECTS)


# ── helpers ─────────────────────────────────────────────────────────────────────────────────


async def _signed_in(client: httpx.AsyncClient, key: str) -> None:
    login = await client.get("/dashboard/login")
    token = TOKEN_RE.search(login.text)
    assert token, login.text
    response = await client.post(
        "/dashboard/login", data={"api_key": key, "_csrf_token": token.group(1)}
    )
    assert response.status_code == 303, response.text


async def _token(client: httpx.AsyncClient) -> str:
    page = await client.get("/dashboard/notifications")
    assert page.status_code == 200, page.text
    token = TOKEN_RE.search(page.text)
    assert token, page.text
    return token.group(1)


async def _save(
    client: httpx.AsyncClient, *, email: str, threshold: str, emails: list[str]
) -> httpx.Response:
    return await client.post(
        "/dashboard/notifications",
        data={
            "_csrf_token": await _token(client),
            "email": email,
            "low_balance_threshold": threshold,
            "emails": emails,
        },
    )


async def _settings(engine: AsyncEngine, account_id: str) -> tuple[Any, ...]:
    async with engine.connect() as connection:
        row = (
            await connection.execute(
                select(
                    Account.email,
                    Account.low_balance_threshold,
                    Account.emails_off,
                    Account.low_balance_armed,
                ).where(Account.id == uuid.UUID(account_id))
            )
        ).one()
    return tuple(row)


def _usage(account_id: str, n: int = 1) -> list[dict[str, Any]]:
    """`n` small requests a minute ago: priced and settled as any usage, which is what moves
    available credit across the low-balance threshold."""
    when = (datetime.now(UTC) - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return [
        {
            "id": f"notify-{uuid.uuid4().hex}",
            "account_id": account_id,
            "time": when,
            "model": "llama-3.3-70b",
            "endpoint": "/v1/chat/completions",
            "prompt_tokens": 1_000,
            "completion_tokens": 200,
        }
        for _ in range(n)
    ]


# ── saving over HTTP ────────────────────────────────────────────────────────────────────────


async def test_settings_are_saved_and_read_back(
    dashboard: Dashboard, customer: Customer, engine: AsyncEngine
) -> None:
    # Nothing turned off to begin with: each email kind is on by default (SPEC 11).
    assert await _settings(engine, customer.id) == (None, None, [], True)
    async with httpx.AsyncClient(base_url=dashboard.url, timeout=30) as client:
        await _signed_in(client, customer.key)
        page = await client.get("/dashboard/notifications")
        assert page.text.count('name="emails"') == len(EMAIL_SUBJECTS)
        assert page.text.count(" checked>") == len(EMAIL_SUBJECTS)

        kept = [k for k in ALL_KINDS if k not in ("payment.succeeded", "key.limit_reached")]
        saved = await _save(client, email=" ops@acme.test ", threshold="€12.50", emails=kept)
        assert saved.status_code == 303
        assert saved.headers["location"] == "/dashboard/notifications"
        assert await _settings(engine, customer.id) == (
            "ops@acme.test",
            Decimal("12.5"),
            ["key.limit_reached", "payment.succeeded"],
            True,
        )
        shown = await client.get("/dashboard/notifications")
        assert "Notification settings saved." in shown.text
        assert 'value="ops@acme.test"' in shown.text
        assert 'value="12.50"' in shown.text
        assert 'value="payment.succeeded">' in shown.text  # unticked
        assert 'value="credit.low" checked>' in shown.text

        # Blank fields clear the address and the threshold; every box ticked turns all on.
        assert (await _save(client, email="", threshold=" ", emails=ALL_KINDS)).status_code == 303
        assert await _settings(engine, customer.id) == (None, None, [], True)


async def test_a_new_threshold_rearms_the_low_balance_notification(
    dashboard: Dashboard, customer: Customer, engine: AsyncEngine, operator: httpx.AsyncClient
) -> None:
    async with httpx.AsyncClient(base_url=dashboard.url, timeout=30) as client:
        await _signed_in(client, customer.key)
        await _save(client, email="", threshold="30", emails=ALL_KINDS)
        await ingest(operator, _usage(customer.id))
        assert (await _settings(engine, customer.id))[3] is False  # crossed: fired once
        await _save(client, email="", threshold="30.00", emails=ALL_KINDS)  # the same amount
        assert (await _settings(engine, customer.id))[3] is False
        await _save(client, email="", threshold="40", emails=ALL_KINDS)
        assert (await _settings(engine, customer.id))[3] is True


@pytest.mark.parametrize(
    ("email", "threshold", "message"),
    [
        ("not-an-email", "5", "doesn&#39;t look like an email address"),
        ("ops@acme.test\r\nBcc: all@example.com", "5", "doesn&#39;t look like an email address"),
        ("two words@acme.test", "5", "doesn&#39;t look like an email address"),
        ("ops@acme.test", "-5", "The threshold must not be negative."),
        ("ops@acme.test", "five", "must be an amount such as 10.00"),
        ("ops@acme.test", "1e3", "must be an amount such as 10.00"),
        ("ops@acme.test", "NaN", "must be an amount such as 10.00"),
        ("ops@acme.test", "5.0000000000001", "has more than 12 decimal places"),
        ("ops@acme.test", "1" * 27, "must be less than"),
    ],
)
async def test_refused_input_is_a_400_that_changes_nothing(
    dashboard: Dashboard,
    customer: Customer,
    engine: AsyncEngine,
    email: str,
    threshold: str,
    message: str,
) -> None:
    async with httpx.AsyncClient(base_url=dashboard.url, timeout=30) as client:
        await _signed_in(client, customer.key)
        kept = [k for k in ALL_KINDS if k != "invoice.finalized"]
        await _save(client, email="before@acme.test", threshold="3", emails=kept)
        before = await _settings(engine, customer.id)

        refused = await _save(client, email=email, threshold=threshold, emails=[])
        assert refused.status_code == 400
        assert refused.headers["content-type"].startswith("text/html")
        assert message in refused.text
        assert 'id="notifications-error"' in refused.text
        assert 'aria-invalid="true"' in refused.text
        # The form comes back as typed, nothing ticked, so it can be corrected.
        assert f'value="{threshold}"' in refused.text
        assert " checked>" not in refused.text
        assert await _settings(engine, customer.id) == before
        assert (
            "Notification settings saved."
            not in (await client.get("/dashboard/notifications")).text
        )


async def test_a_form_without_its_csrf_token_is_refused(
    dashboard: Dashboard, customer: Customer, engine: AsyncEngine
) -> None:
    async with httpx.AsyncClient(base_url=dashboard.url, timeout=30) as client:
        await _signed_in(client, customer.key)
        refused = await client.post(
            "/dashboard/notifications",
            data={"email": "mallory@evil.test", "low_balance_threshold": "1", "emails": []},
        )
        assert refused.status_code == 403
        assert "This form has expired" in refused.text
    assert await _settings(engine, customer.id) == (None, None, [], True)


async def test_without_a_session_the_page_asks_to_sign_in(dashboard: Dashboard) -> None:
    async with httpx.AsyncClient(base_url=dashboard.url, timeout=30) as client:
        page = await client.get("/dashboard/notifications")
    assert page.status_code == 303
    assert page.headers["location"] == "/dashboard/login?next=%2Fdashboard%2Fnotifications"


# ── what the page shows ─────────────────────────────────────────────────────────────────────


async def test_email_is_off_without_smtp(dashboard: Dashboard, customer: Customer) -> None:
    async with httpx.AsyncClient(base_url=dashboard.url, timeout=30) as client:
        await _signed_in(client, customer.key)
        page = await client.get("/dashboard/notifications")
        assert 'id="email-off"' in page.text
        assert "Email is off on this gateway" in page.text
        # The settings can still be saved.
        saved = await _save(client, email="ops@acme.test", threshold="", emails=ALL_KINDS)
        assert saved.status_code == 303


async def test_recent_notifications_are_listed_newest_first_and_only_the_accounts_own(
    dashboard: Dashboard, engine: AsyncEngine, operator: httpx.AsyncClient
) -> None:
    fresh, key = await new_account_with_key(operator, name="Fresh")  # no credit: no tier change
    other, _ = await new_account_with_key(operator, name="Other")
    async with httpx.AsyncClient(base_url=dashboard.url, timeout=30) as client:
        await _signed_in(client, key)
        empty = await client.get("/dashboard/notifications")
        assert 'id="no-notifications"' in empty.text
        assert 'id="recent-notifications"' not in empty.text

        invoice_id = str(uuid.uuid4())
        sessions = async_sessionmaker(engine, expire_on_commit=False)
        async with unit_of_work(sessions) as db:
            account = uuid.UUID(fresh["id"])
            await notifications.emit(
                db, account, EventType.TIER_CHANGED, {"from": "standard", "to": "pro"}
            )
            await notifications.emit(
                db,
                account,
                EventType.INVOICE_FINALIZED,
                {
                    "invoice_id": invoice_id,
                    "number": "TG-2026-000042",
                    "amount_due": Decimal("12.3456"),
                    "currency": "EUR",
                },
            )
            await notifications.emit(
                db, uuid.UUID(other["id"]), EventType.ACCOUNT_SUSPENDED, {"reason": "x"}
            )
        page = await client.get("/dashboard/notifications")
    assert page.status_code == 200
    assert 'id="no-notifications"' not in page.text
    rows = re.findall(r'<tr data-type="([^"]+)">', page.text)
    assert rows == ["invoice.finalized", "tier.changed"]
    assert (
        f'<a href="/dashboard/invoices/{invoice_id}">Invoice TG-2026-000042: €12.35 due.</a>'
        in (page.text)
    )
    assert "From standard to pro." in page.text
    assert "No email for this kind" in page.text  # tier.changed is a webhook only
    assert "Account suspended" not in page.text


# ── the page in Chromium ────────────────────────────────────────────────────────────────────


async def test_change_settings_in_the_browser_and_see_a_low_balance_notification(
    page: Page,
    dashboard: Dashboard,
    customer: Customer,
    engine: AsyncEngine,
    operator: httpx.AsyncClient,
) -> None:
    await sign_in(page, customer.key)
    await (
        page.get_by_role("navigation", name="Dashboard")
        .get_by_role("link", name="Notifications")
        .click()
    )
    await page.wait_for_url("**/dashboard/notifications")
    await expect(page.get_by_role("heading", name="Notifications", exact=True)).to_be_visible()
    await expect(page.locator("nav a[aria-current=page]")).to_have_text("Notifications")
    await expect(page.locator("#email-off")).to_contain_text("Email is off")
    # Its €25.00 purchase moved it to the standard tier: a webhook-only event, already listed.
    tier = page.locator('#recent-notifications tr[data-type="tier.changed"]')
    await expect(tier).to_contain_text("From free to standard.")
    await expect(tier).to_contain_text("No email for this kind")
    payment = page.get_by_role("checkbox", name="Payment receipt")
    await expect(payment).to_be_checked()

    await page.fill("#email", "ops@acme.test")
    await page.fill("#low-balance-threshold", "30")  # above the €25.00 available
    await payment.uncheck()
    await page.get_by_role("button", name="Save").click()

    await page.wait_for_url("**/dashboard/notifications")
    await expect(page.get_by_role("status").first).to_have_text("Notification settings saved.")
    await expect(page.locator("#email")).to_have_value("ops@acme.test")
    await expect(page.locator("#low-balance-threshold")).to_have_value("30.00")
    await expect(page.get_by_role("checkbox", name="Payment receipt")).not_to_be_checked()
    await expect(page.get_by_role("checkbox", name="Low balance")).to_be_checked()
    assert await _settings(engine, customer.id) == (
        "ops@acme.test",
        Decimal(30),
        ["payment.succeeded"],
        True,
    )

    # A refused threshold: the message and the field, nothing saved.
    await page.fill("#low-balance-threshold", "-1")
    await page.get_by_role("button", name="Save").click()
    await expect(page.locator("#notifications-error")).to_have_text(
        "The threshold must not be negative."
    )
    await expect(page.locator("#low-balance-threshold")).to_have_attribute("aria-invalid", "true")
    assert (await _settings(engine, customer.id))[1] == Decimal(30)

    # Usage takes available credit below the threshold: one `credit.low`, listed.
    await ingest(operator, _usage(customer.id))
    await page.goto("/dashboard/notifications")
    row = page.locator('#recent-notifications tr[data-type="credit.low"]')
    await expect(row).to_have_count(1)
    await expect(row.locator("th")).to_contain_text("Low balance")
    await expect(row).to_contain_text(
        re.compile(r"Available credit €2[45]\.\d\d fell below €30\.00\.")
    )
    await expect(row).to_contain_text(str(datetime.now(UTC).year))


# ── with a mail server ──────────────────────────────────────────────────────────────────────


@pytest.fixture
def mailing(database_url: str) -> Iterator[tuple[Dashboard, MailSink]]:
    """A gateway with SMTP and its outbox worker, for one test only: left running, it would
    deliver other tests' events."""
    sink = MailSink().start()
    running = start_dashboard(database_url, TOLLGATE_SMTP_URL=sink.url, TOLLGATE_NOTIFICATIONS=True)
    yield running, sink
    running.server.stop()
    running.upstream.stop()
    running.stripe.stop()
    sink.stop()


async def _email_state(client: httpx.AsyncClient, type_: str, seconds: float = 15) -> str:
    """The Email cell of the page's newest `type_` row, once its delivery has finished."""
    deadline = time.monotonic() + seconds
    while True:
        page = (await client.get("/dashboard/notifications")).text
        cell = re.search(
            rf'<tr data-type="{re.escape(type_)}">.*?<td class="email-state (\w+)">([^<]*)</td>',
            page,
            re.S,
        )
        if cell and cell.group(1) in ("ok", "failed", "none"):
            return cell.group(2)
        if time.monotonic() > deadline:
            raise AssertionError(f"no finished email for {type_}: {cell and cell.groups()}")
        await asyncio.sleep(0.2)


async def test_with_smtp_the_settings_decide_who_is_emailed(
    mailing: tuple[Dashboard, MailSink],
) -> None:
    gateway, sink = mailing
    async with httpx.AsyncClient(
        base_url=gateway.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30
    ) as admin:
        wants, wants_key = await new_account_with_key(admin, name="Wants", credit="25.00")
        declines, declines_key = await new_account_with_key(admin, name="Declines", credit="25.00")
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
            await _signed_in(client, wants_key)
            page = await client.get("/dashboard/notifications")
            assert 'id="email-off"' not in page.text
            assert 'id="email-status" class="ok">On' in page.text
            await _save(client, email="ada@example.com", threshold="30", emails=ALL_KINDS)
            await ingest(admin, _usage(wants["id"]))
            assert await _email_state(client, "credit.low") == "Sent to ada@example.com"
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
            await _signed_in(client, declines_key)
            others = [k for k in ALL_KINDS if k != "credit.low"]
            await _save(client, email="bob@example.com", threshold="30", emails=others)
            await ingest(admin, _usage(declines["id"]))
            assert await _email_state(client, "credit.low") == "Not emailed"
    # Bob gets none. Ada's went here, unless another running gateway with a worker (the
    # notification tests') sent it first; this one also mails earlier tests' events.
    to = [(str(m["To"]), str(m["Subject"])) for m in sink.messages]
    assert not [m for m in to if m[0] == "bob@example.com"]
    assert [m for m in to if m[0] == "ada@example.com"] in (
        [],
        [("ada@example.com", "Your credit is running low")],
    )


# ── the page's pure parts ───────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("typed", "expected"),
    [("", None), ("  ", None), ("5", Decimal(5)), ("€ 5.25 ", Decimal("5.25")), ("0", Decimal(0))],
)
def test_threshold_input(typed: str, expected: Decimal | None) -> None:
    assert service.parse_threshold(typed) == expected


def test_a_malformed_threshold_names_the_field() -> None:
    with pytest.raises(InvalidRequest) as refused:
        service.parse_threshold("12,50")
    assert refused.value.param == "low_balance_threshold"
    assert refused.value.message == (
        "The low-balance threshold must be an amount such as 10.00, not '12,50'."
    )


def test_every_email_kind_is_offered_with_a_label() -> None:
    kinds = service.email_kinds()
    assert [k.type for k in kinds] == list(EMAIL_SUBJECTS)
    assert [k.label for k in kinds] == [
        "Low balance",
        "Payment receipt",
        "Invoice issued",
        "Auto-recharge failed",
        "Key limit reached",
    ]


def _event(
    type_: EventType, *, dispatched: bool, email: NotificationDelivery | None
) -> RecentEvent:
    return RecentEvent("msg_1", type_.value, datetime.now(UTC), {}, dispatched, email)


def _delivery(status: str, error: str | None = None) -> NotificationDelivery:
    return NotificationDelivery(status=status, email_to="ada@example.com", last_error=error)


@pytest.mark.parametrize(
    ("event", "outcome"),
    [
        (_event(EventType.CREDIT_LOW, dispatched=False, email=None), ("Queued", "pending")),
        (_event(EventType.CREDIT_LOW, dispatched=True, email=None), ("Not emailed", "none")),
        (
            _event(EventType.TIER_CHANGED, dispatched=True, email=None),
            ("No email for this kind", "none"),
        ),
        (
            _event(EventType.CREDIT_LOW, dispatched=True, email=_delivery("pending")),
            ("Sending", "pending"),
        ),
        (
            _event(EventType.CREDIT_LOW, dispatched=True, email=_delivery("pending", "timeout")),
            ("Retrying", "pending"),
        ),
        (
            _event(EventType.CREDIT_LOW, dispatched=True, email=_delivery("succeeded")),
            ("Sent to ada@example.com", "ok"),
        ),
        (
            _event(EventType.CREDIT_LOW, dispatched=True, email=_delivery("failed", "550")),
            ("Failed to reach ada@example.com", "failed"),
        ),
    ],
)
def test_what_became_of_an_email(event: RecentEvent, outcome: tuple[str, str]) -> None:
    assert service.email_outcome(event) == outcome


@pytest.mark.parametrize(
    ("type_", "data", "summary"),
    [
        (
            EventType.CREDIT_LOW,
            {"available": "4.2", "threshold": "5.00", "currency": "EUR"},
            "Available credit €4.20 fell below €5.00.",
        ),
        (
            EventType.KEY_LIMIT_REACHED,
            {"api_key_id": "k1", "limit": "10.00", "period": "day", "currency": "USD"},
            "Key tg-abcdefgh… reached its limit of $10.00 a day.",
        ),
        (
            EventType.KEY_LIMIT_REACHED,
            {"api_key_id": "gone", "limit": "10.00", "period": "total"},
            "An API key reached its limit of €10.00 in total.",
        ),
        (
            EventType.USER_LIMIT_REACHED,
            {"user": "u-7", "limit": "1.00", "period": "month"},
            "End user 'u-7' reached the limit of €1.00 a month.",
        ),
        (EventType.PAYMENT_SUCCEEDED, {"amount": "20.00"}, "€20.00 added to your credit."),
        (
            EventType.AUTO_RECHARGE_FAILED,
            {"amount": "50.00", "reason": "card_declined"},
            "Charging €50.00 failed: card_declined",
        ),
        (EventType.ACCOUNT_SUSPENDED, {}, "Requests are refused."),
        (EventType.CREDIT_LOW, {"available": "oops"}, "Available credit — fell below —."),
    ],
)
def test_event_summaries(type_: EventType, data: dict[str, Any], summary: str) -> None:
    assert service.event_summary(type_, data, "EUR", {"k1": "tg-abcdefgh"}) == summary
