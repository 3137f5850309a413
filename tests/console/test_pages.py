"""The console's usage, invoices, pricing and webhooks pages: the usage table and CSV equal to
the admin usage query, a billing operator running a month's invoices from the form (in
Chromium), the roles enforced on every write, the endpoint's secret shown once."""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
from playwright.async_api import Page
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import new_account_with_key
from tests.console.helpers import client_signed_in, csrf, set_password_and_sign_in
from tests.dashboard.conftest import Dashboard
from tests.dashboard.seed import ingest, usage_events

CSV_HEADER = [
    "date",
    "account_id",
    "account_name",
    "model",
    "requests",
    "input_tokens",
    "output_tokens",
    "images",
    "search_requests",
    "cost",
    "currency",
    "upstream_cost",
    "margin",
    "costed_requests",
]


def _midnight(day: date) -> str:
    return f"{day.isoformat()}T00:00:00Z"


def _last_month() -> tuple[str, datetime]:
    """("YYYY-MM" of last month, a time late on its last day)."""
    month_start = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return (month_start - timedelta(days=1)).strftime("%Y-%m"), month_start - timedelta(hours=2)


def _csv_rows(body: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(body)))


def _key(rows: Iterable[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return sorted(rows)


async def test_usage_across_accounts_is_the_usage_query_by_day_model_and_account(
    clean_db: AsyncEngine,
    dashboard: Dashboard,
    operator: httpx.AsyncClient,
    make_operator: Any,
) -> None:
    busy, _ = await new_account_with_key(operator, name="Busy Bees", credit="500.00")
    calm, _ = await new_account_with_key(operator, name="=Calm Co", credit="500.00")
    now = datetime.now(UTC)
    await ingest(operator, usage_events(busy["id"], now))
    await ingest(operator, usage_events(calm["id"], now, days=10, seed=3))
    first, last = (now - timedelta(days=29)).date(), now.date()
    answer = await operator.post(
        "/admin/usage/completions",
        json={
            "start_time": _midnight(first),
            "end_time": _midnight(last + timedelta(days=1)),
            "window_size": "DAY",
            "group_by": ["model", "user_id"],
        },
    )
    assert answer.status_code == 200, answer.text
    expected = _key(
        (
            r["windowStart"][:10],
            r["groupBy"]["user_id"],
            r["groupBy"]["model"],
            r["requests"],
            r["input_token"],
            r["output_token"],
            r["images"],
            r["search_requests"],
            r["cost"],
            r["currency"],
        )
        for r in answer.json()["data"]
    )
    assert expected, "the seed made usage"
    names = {busy["id"]: "Busy Bees", calm["id"]: "'=Calm Co"}  # a name is never a formula
    token = await make_operator("usage@example.com", "viewer")
    range_ = {"from": first.isoformat(), "to": last.isoformat()}
    async with client_signed_in(dashboard, token, "usage@example.com") as client:
        shown = await client.get("/console/usage", params=range_)
        assert shown.status_code == 200, shown.text[:300]
        assert "Busy Bees" in shown.text and "=Calm Co" in shown.text
        assert 'id="usage-table"' in shown.text
        exported = await client.get("/console/usage.csv", params=range_)
        assert exported.status_code == 200
        assert exported.headers["content-type"].startswith("text/csv")
        assert "attachment" in exported.headers["content-disposition"]
        records = _csv_rows(exported.text)
        assert records[0] == CSV_HEADER
        assert all(names[r[1]] == r[2] for r in records[1:])
        got = _key(
            (r[0], r[1], r[3], int(r[4]), int(r[5]), int(r[6]), int(r[7]), int(r[8]), r[9], r[10])
            for r in records[1:]
        )
        assert got == expected
        assert sum(Decimal(r[9]) for r in records[1:]) == sum(Decimal(r[8]) for r in expected)
        # One account and one model (by an alias the catalog knows, as the usage query does).
        only = await client.get(
            "/console/usage.csv", params={**range_, "account": calm["id"], "model": "llama-3-1-8b"}
        )
        filtered = _csv_rows(only.text)[1:]
        assert filtered and {(r[1], r[3]) for r in filtered} == {(calm["id"], "llama-3.1-8b")}
        assert sum(Decimal(r[9]) for r in filtered) == sum(
            Decimal(r[8]) for r in expected if r[1] == calm["id"] and r[2] == "llama-3.1-8b"
        )
        # The default range is this month; a malformed one is said, not a crash.
        default = _csv_rows((await client.get("/console/usage.csv")).text)
        month = now.strftime("%Y-%m")
        assert {r[0][:7] for r in default[1:]} == {month}
        assert sum(Decimal(r[9]) for r in default[1:]) == sum(
            Decimal(r[8]) for r in expected if r[0].startswith(month)
        )
        wrong = await client.get("/console/usage", params={"from": "yesterday"})
        assert wrong.status_code == 200 and "must be a date" in wrong.text
        backwards = await client.get("/console/usage.csv", params={"to": "1999-01-01"})
        assert backwards.status_code == 400


async def test_a_billing_operator_runs_last_month_from_the_form_and_opens_its_pdf(
    clean_db: AsyncEngine,
    page: Page,
    dashboard: Dashboard,
    operator: httpx.AsyncClient,
    make_operator: Any,
) -> None:
    account, _ = await new_account_with_key(operator, name="Invoiced Ltd", credit="500.00")
    period, late_last_month = _last_month()
    await ingest(operator, usage_events(account["id"], late_last_month, days=20))
    token = await make_operator("billing@example.com", "billing")
    await set_password_and_sign_in(page, token, "billing@example.com")
    await page.goto("/console/invoices")
    assert await page.locator("#no-invoices").count() == 1
    await page.fill("#run-period", period)
    await page.click("#run-form button[type=submit]")
    await page.wait_for_url(f"**/console/invoices?period={period}")
    assert "1 invoices issued now, 1 in total" in await page.inner_text("[role=status]")
    row = page.locator("#invoice-list tbody tr")
    assert await row.count() == 1
    assert "Invoiced Ltd" in await row.inner_text()
    await row.locator("a:has-text('View')").click()
    await page.wait_for_url(f"**/console/invoices/{account['id']}/*")
    assert await page.locator("#invoice-lines tbody tr").count() >= 1
    pdf_url = await page.get_attribute("#invoice-pdf", "href")
    assert pdf_url is not None
    pdf = await page.request.get(pdf_url)
    assert pdf.status == 200 and pdf.headers["content-type"] == "application/pdf"
    assert (await pdf.body()).startswith(b"%PDF")
    # A second run issues none.
    await page.goto("/console/invoices")
    await page.fill("#run-period", period)
    await page.click("#run-form button[type=submit]")
    await page.wait_for_url(f"**/console/invoices?period={period}")
    assert "0 invoices issued now, 1 in total" in await page.inner_text("[role=status]")
    await page.goto("/console/audit?action=invoices.run")
    entries = page.locator("#audit tbody tr")
    assert await entries.count() == 1
    assert "billing@example.com" in await entries.inner_text()
    async with clean_db.connect() as connection:
        invoices = (
            await connection.execute(
                text("SELECT account_id, status FROM invoices WHERE account_id = :a"),
                {"a": account["id"]},
            )
        ).all()
        audited = await connection.scalar(
            text("SELECT after FROM audit_log WHERE action = 'invoices.run'")
        )
    assert len(invoices) == 1
    assert audited["period"] == period and len(audited["issued"]) == 1


async def _failed_delivery(
    engine: AsyncEngine, account_id: str, endpoint_id: str
) -> tuple[uuid.UUID, datetime]:
    """An event to the endpoint whose delivery failed once and gave up (as the worker leaves
    one after 24 h); the test gateways run no delivery worker."""
    delivery_id = uuid.uuid4()
    async with engine.begin() as connection:
        seq = await connection.scalar(
            text(
                "INSERT INTO notification_events (account_id, id, type, data, dispatched_at) "
                "VALUES (:a, :e, 'account.suspended', CAST(:d AS jsonb), now()) RETURNING seq"
            ),
            {"a": account_id, "e": f"msg_{uuid.uuid4().hex}", "d": '{"reason": "test"}'},
        )
        event_id = await connection.scalar(
            text("SELECT id FROM notification_events WHERE seq = :s"), {"s": seq}
        )
        next_at = await connection.scalar(
            text(
                """
                INSERT INTO notification_deliveries
                    (account_id, id, event_id, seq, channel, endpoint_id, status, attempts,
                     next_attempt_at, finished_at, last_status, last_error)
                VALUES (:a, :i, :e, :s, 'webhook', :w, 'failed', 1,
                        now() - interval '1 hour', now(), 500, 'HTTP 500')
                RETURNING next_attempt_at
                """
            ),
            {"a": account_id, "i": delivery_id, "e": event_id, "s": seq, "w": endpoint_id},
        )
        await connection.execute(
            text(
                "INSERT INTO delivery_attempts (account_id, delivery_id, attempt, status_code,"
                " latency_ms, error) VALUES (:a, :i, 1, 500, 42, 'HTTP 500')"
            ),
            {"a": account_id, "i": delivery_id},
        )
    return delivery_id, next_at


async def _delivery_state(engine: AsyncEngine, delivery_id: uuid.UUID) -> tuple[Any, ...]:
    async with engine.connect() as connection:
        row = (
            await connection.execute(
                text("SELECT status, next_attempt_at FROM notification_deliveries WHERE id = :i"),
                {"i": delivery_id},
            )
        ).one()
    return tuple(row)


async def test_a_viewer_posting_by_hand_can_neither_run_invoices_nor_retry_a_delivery(
    clean_db: AsyncEngine,
    dashboard: Dashboard,
    operator: httpx.AsyncClient,
    make_operator: Any,
) -> None:
    account, _ = await new_account_with_key(operator, name="Quiet", credit="500.00")
    period, late_last_month = _last_month()
    await ingest(operator, usage_events(account["id"], late_last_month, days=5))
    endpoint = (
        await operator.post("/admin/webhook-endpoints", json={"url": "http://127.0.0.1:9/hook"})
    ).json()
    delivery_id, _ = await _failed_delivery(clean_db, account["id"], endpoint["id"])
    before = await _delivery_state(clean_db, delivery_id)
    retry = f"/console/webhooks/{endpoint['id']}/deliveries/{delivery_id}/retry"
    viewer_token = await make_operator("viewer@example.com", "viewer")
    async with client_signed_in(dashboard, viewer_token, "viewer@example.com") as client:
        invoices = await client.get("/console/invoices")
        assert invoices.status_code == 200 and "run-form" not in invoices.text
        hooks = await client.get("/console/webhooks")
        assert hooks.status_code == 200
        assert str(delivery_id) in hooks.text and "Retry now" not in hooks.text
        assert "endpoint-form" not in hooks.text
        token = csrf(hooks.text)
        ran = await client.post(
            "/console/invoices/run", data={"period": period, "_csrf_token": token}
        )
        assert ran.status_code == 403 and "viewer" in ran.text
        retried = await client.post(retry, data={"_csrf_token": token})
        assert retried.status_code == 403
        created = await client.post(
            "/console/webhooks", data={"url": "https://example.com/h", "_csrf_token": token}
        )
        assert created.status_code == 403
        deleted = await client.post(
            f"/console/webhooks/{endpoint['id']}/delete", data={"_csrf_token": token}
        )
        assert deleted.status_code == 403
    async with clean_db.connect() as connection:
        assert await connection.scalar(text("SELECT count(*) FROM invoices")) == 0
        # Nothing done as an operator (the admin API's own set-up is in the log too).
        assert (
            await connection.scalar(
                text("SELECT count(*) FROM audit_log WHERE actor LIKE '%@example.com'")
            )
            == 0
        )
        assert (
            await connection.scalar(
                text("SELECT count(*) FROM webhook_endpoints WHERE deleted_at IS NULL")
            )
            == 1
        )
    assert await _delivery_state(clean_db, delivery_id) == before
    # A billing operator may run invoices but not touch webhooks.
    billing_token = await make_operator("billing@example.com", "billing")
    async with client_signed_in(dashboard, billing_token, "billing@example.com") as client:
        hooks = await client.get("/console/webhooks")
        retried = await client.post(retry, data={"_csrf_token": csrf(hooks.text)})
        assert retried.status_code == 403
    assert await _delivery_state(clean_db, delivery_id) == before
    # The same form from an admin works: the failed delivery is due again, audited.
    admin_token = await make_operator("admin@example.com", "admin")
    async with client_signed_in(dashboard, admin_token, "admin@example.com") as client:
        hooks = await client.get(f"/console/webhooks/{endpoint['id']}")
        assert hooks.status_code == 200 and "Retry now" in hooks.text and "HTTP 500" in hooks.text
        retried = await client.post(
            retry, data={"_csrf_token": csrf(hooks.text), "back": "endpoint"}
        )
        assert retried.status_code == 303
        assert retried.headers["location"].startswith(f"/console/webhooks/{endpoint['id']}")
    status, next_at = await _delivery_state(clean_db, delivery_id)
    assert status == "pending" and next_at > before[1]
    async with clean_db.connect() as connection:
        entry = (
            await connection.execute(
                text("SELECT actor, account_id, object_id FROM audit_log WHERE action = :a"),
                {"a": "webhook_delivery.retried"},
            )
        ).one()
    assert entry == ("admin@example.com", uuid.UUID(account["id"]), str(delivery_id))


async def test_an_admin_creates_an_endpoint_sees_its_secret_once_and_deletes_it(
    clean_db: AsyncEngine,
    dashboard: Dashboard,
    make_operator: Any,
) -> None:
    token = await make_operator("hooks@example.com", "admin")
    async with client_signed_in(dashboard, token, "hooks@example.com") as client:
        empty = await client.get("/console/webhooks")
        assert empty.status_code == 200 and 'id="no-endpoints"' in empty.text
        bad = await client.post(
            "/console/webhooks", data={"url": "ftp://nope", "_csrf_token": csrf(empty.text)}
        )
        assert bad.status_code == 400 and "http://" in bad.text
        created = await client.post(
            "/console/webhooks",
            data={
                "url": "https://hooks.example.com/tollgate",
                "description": "billing alerts",
                "events": ["credit.low", "invoice.finalized"],
                "_csrf_token": csrf(empty.text),
            },
        )
        assert created.status_code == 200, created.text[:300]
        secret = created.text.split('id="endpoint-secret">', 1)[1].split("<", 1)[0]
        assert secret.startswith("whsec_") and len(secret) > 30
        again = await client.get("/console/webhooks")
        assert "https://hooks.example.com/tollgate" in again.text
        assert "credit.low, invoice.finalized" in again.text and "billing alerts" in again.text
        assert secret not in again.text and "endpoint-secret" not in again.text
        async with clean_db.connect() as connection:
            stored = (
                await connection.execute(text("SELECT id, secret, events FROM webhook_endpoints"))
            ).one()
        assert stored.secret == secret and stored.events == ["credit.low", "invoice.finalized"]
        deleted = await client.post(
            f"/console/webhooks/{stored.id}/delete", data={"_csrf_token": csrf(again.text)}
        )
        assert deleted.status_code == 303
        after = await client.get("/console/webhooks")
        assert "Deleted the endpoint https://hooks.example.com/tollgate" in after.text
        assert 'id="no-endpoints"' in after.text and f"endpoint-{stored.id}" not in after.text
        assert (await client.get(f"/console/webhooks/{stored.id}")).status_code == 404
    async with clean_db.connect() as connection:
        actions = (
            await connection.execute(
                text(
                    "SELECT actor, action, object_id FROM audit_log"
                    " WHERE action LIKE 'webhook%' ORDER BY at"
                )
            )
        ).all()
    assert [tuple(a) for a in actions] == [
        ("hooks@example.com", "webhook_endpoint.created", str(stored.id)),
        ("hooks@example.com", "webhook_endpoint.deleted", str(stored.id)),
    ]


async def test_the_pricing_page_lists_each_version_with_its_prices_and_suffix_fees(
    clean_db: AsyncEngine, dashboard: Dashboard, make_operator: Any
) -> None:
    token = await make_operator("prices@example.com", "viewer")
    async with client_signed_in(dashboard, token, "prices@example.com") as client:
        shown = await client.get("/console/pricing")
    assert shown.status_code == 200
    body = shown.text
    assert 'id="version-2025-01-01"' in body and "in force" in body
    row = body.split('data-model="llama-3.3-70b"', 1)[1].split("</tr>", 1)[0]
    assert "0.80" in row and "meta" in row and "llama-3-3-70b" in row  # its alias
    assert "<code>-online</code>" in body and "6.00" in body
    assert "<code>-deep</code>" in body and "12.00" in body
