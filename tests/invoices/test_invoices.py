"""Monthly invoices end to end: usage on several models, suffixes and images priced by the real
tables and settled by the real writer; the admin run; numbering; late usage; JSON and PDF."""

from __future__ import annotations

import asyncio
import io
import re
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import httpx
import msgspec
from pypdf import PdfReader
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.engine import create_sessionmaker
from app.invoices.tasks import monthly_invoices_job, run_period_blocking
from app.payments.config import BillingConfig
from app.pricing import Usage
from tests.conftest import make_settings, new_account_with_key
from tests.invoices.conftest import priced_event, record
from tests.support.live import LiveServer

JUNE = datetime(2026, 6, 1, tzinfo=UTC)
JULY = datetime(2026, 7, 1, tzinfo=UTC)
CENT = Decimal("0.01")

INVOICE_FIELDS = {
    "id",
    "number",
    "period_start",
    "period_end",
    "currency",
    "status",
    "lines",
    "subtotal",
    "credits_applied",
    "amount_due",
    "issued_at",
}
LINE_FIELDS = {"description", "model", "kind", "quantity", "unit_price", "amount"}


def june_usage(account_id: str) -> list[Any]:
    at = JUNE + timedelta(days=3, hours=5)
    return [
        priced_event(
            account_id,
            at,
            "llama-3.3-70b",
            Usage(prompt_tokens=1_234_567, completion_tokens=89_012),
        ),
        priced_event(
            account_id,
            at + timedelta(days=1),
            "llama-3.3-70b",
            Usage(prompt_tokens=765_433, completion_tokens=10_988),
        ),
        *(
            priced_event(
                account_id,
                at + timedelta(days=2, minutes=i),
                "llama-3.3-70b-online",
                Usage(prompt_tokens=10_000, completion_tokens=2_000),
            )
            for i in range(3)
        ),
        *(
            priced_event(
                account_id,
                at + timedelta(days=9, minutes=i),
                "deepseek-r1-70b-deep",
                Usage(prompt_tokens=5_000, completion_tokens=7_000),
            )
            for i in range(2)
        ),
        priced_event(
            account_id,
            at + timedelta(days=20),
            "pixtral-12b-2409",
            Usage(prompt_tokens=1_000, completion_tokens=100, images_in=3),
        ),
        priced_event(
            account_id,
            JULY - timedelta(microseconds=1),
            "llama-3.1-8b",
            Usage(prompt_tokens=6_000_000, completion_tokens=2_000_000),
        ),
    ]


async def run(admin: httpx.AsyncClient, period: str) -> dict[str, Any]:
    response = await admin.post("/admin/invoices/run", json={"period": period})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def exact_line_amounts(engine: AsyncEngine, invoice_id: str) -> list[Any]:
    async with engine.connect() as connection:
        result = await connection.execute(
            text(
                "SELECT quantity, unit_price, per, amount_exact, amount FROM invoice_lines "
                "WHERE invoice_id = :id ORDER BY position"
            ),
            {"id": invoice_id},
        )
        return list(result)


async def test_invoice_equals_the_months_usage_to_the_cent(
    invoice_admin: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    account, _ = await new_account_with_key(invoice_admin, credit="100.00")
    events = june_usage(account["id"])
    july = priced_event(
        account["id"], JULY, "llama-3.3-70b", Usage(prompt_tokens=50, completion_tokens=5)
    )
    await record(clean_db, [*events, july])

    result = await run(invoice_admin, "2026-06")
    assert result["created"] == 1
    [invoice] = result["data"]
    assert set(invoice) == INVOICE_FIELDS
    assert invoice["number"] == f"INV-{datetime.now(UTC).year}-000001"
    assert (invoice["period_start"], invoice["period_end"]) == (
        "2026-06-01T00:00:00Z",
        "2026-07-01T00:00:00Z",
    )
    assert (invoice["status"], invoice["currency"]) == ("final", "EUR")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", invoice["issued_at"])

    cost = sum((e.cost for e in events), Decimal(0))
    lines = invoice["lines"]
    assert all(set(line) == LINE_FIELDS for line in lines)
    # The lines' unrounded amounts are kept and add up to the month's event costs exactly;
    # each line is that amount rounded half-up to the cent, and the subtotal is their sum
    # (SPEC 3.4), so it is the month's usage up to half a cent per line.
    stored = await exact_line_amounts(clean_db, invoice["id"])
    assert sum(row.amount_exact for row in stored) == cost
    for line, row in zip(lines, stored, strict=True):
        assert line["quantity"] * Decimal(line["unit_price"]) == row.amount_exact
        assert Decimal(line["amount"]) == row.amount_exact.quantize(CENT, ROUND_HALF_UP)
    subtotal = Decimal(invoice["subtotal"])
    assert subtotal == sum(Decimal(line["amount"]) for line in lines)
    assert subtotal == sum(r.amount_exact.quantize(CENT, ROUND_HALF_UP) for r in stored)
    assert abs(subtotal - cost) <= Decimal("0.005") * len(lines)
    assert (cost, subtotal) == (Decimal("3.553185"), Decimal("3.54"))  # the rule, not round(sum)
    assert invoice["credits_applied"] == invoice["subtotal"]
    assert invoice["amount_due"] == "0.00"

    by_key = {(line["model"], line["kind"]): line for line in lines}
    assert set(by_key) == {
        ("llama-3.3-70b", "input_tokens"),
        ("llama-3.3-70b", "output_tokens"),
        ("llama-3.3-70b-online", "input_tokens"),
        ("llama-3.3-70b-online", "output_tokens"),
        ("llama-3.3-70b-online", "search_requests"),
        ("deepseek-r1-70b-deep", "input_tokens"),
        ("deepseek-r1-70b-deep", "output_tokens"),
        ("deepseek-r1-70b-deep", "search_requests"),
        ("pixtral-12b-2409", "input_tokens"),
        ("pixtral-12b-2409", "output_tokens"),
        ("pixtral-12b-2409", "images"),
        ("llama-3.1-8b", "input_tokens"),
        ("llama-3.1-8b", "output_tokens"),
    }
    assert by_key[("llama-3.3-70b", "input_tokens")]["quantity"] == 2_000_000
    assert by_key[("llama-3.3-70b", "input_tokens")]["amount"] == "1.60"
    assert by_key[("llama-3.3-70b", "input_tokens")]["unit_price"] == "0.0000008"
    search = by_key[("llama-3.3-70b-online", "search_requests")]
    assert (search["quantity"], search["unit_price"], search["amount"]) == (3, "0.006", "0.02")
    assert "(-online)" in search["description"]
    assert "(-deep)" in by_key[("deepseek-r1-70b-deep", "search_requests")]["description"]
    images = by_key[("pixtral-12b-2409", "images")]
    assert (images["quantity"], images["unit_price"], images["amount"]) == (3, "0.001", "0.00")
    # Seed 000's example: 6M input + 2M output tokens on llama-3.1-8b cost exactly €1.60.
    assert by_key[("llama-3.1-8b", "input_tokens")]["amount"] == "1.20"
    assert by_key[("llama-3.1-8b", "output_tokens")]["amount"] == "0.40"


async def test_rerunning_creates_nothing_and_numbers_stay_gapless(
    invoice_admin: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    accounts = [(await new_account_with_key(invoice_admin, name=f"A{i}"))[0] for i in range(4)]
    await record(clean_db, [e for a in accounts for e in june_usage(a["id"])[:2]])

    # Two runs at once (two instances, or an impatient operator), then a third.
    first, second = await asyncio.gather(
        run(invoice_admin, "2026-06"), run(invoice_admin, "2026-06")
    )
    assert first["created"] + second["created"] == 4
    again = await run(invoice_admin, "2026-06")
    assert again["created"] == 0
    assert again["data"] == sorted(first["data"], key=lambda i: i["number"])
    year = datetime.now(UTC).year
    assert [i["number"] for i in again["data"]] == [f"INV-{year}-{n:06d}" for n in range(1, 5)]

    # The next account's first invoice continues the sequence.
    late, _ = await new_account_with_key(invoice_admin, name="Late")
    await record(clean_db, june_usage(late["id"])[:1])
    assert [i["number"] for i in (await run(invoice_admin, "2026-06"))["data"]][-1] == (
        f"INV-{year}-000005"
    )
    async with clean_db.connect() as connection:
        assert await connection.scalar(text("SELECT count(*) FROM invoices")) == 5


async def test_late_usage_goes_on_the_next_invoice_labelled_with_its_month(
    invoicing: LiveServer, invoice_admin: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    account, key = await new_account_with_key(invoice_admin, credit="50.00")
    await record(clean_db, june_usage(account["id"])[:3])
    [june] = (await run(invoice_admin, "2026-06"))["data"]

    # Arrives after June's invoice is final: a June event, and July's own usage.
    late = priced_event(
        account["id"],
        JUNE + timedelta(days=29),
        "llama-3.3-70b-online",
        Usage(prompt_tokens=400_000, completion_tokens=12_345),
    )
    july = priced_event(
        account["id"],
        JULY + timedelta(days=4),
        "llama-3.1-8b",
        Usage(prompt_tokens=300_000, completion_tokens=30_000),
    )
    await record(clean_db, [late, july])
    assert (await run(invoice_admin, "2026-06"))["created"] == 0  # June stays as issued

    [july_invoice] = (await run(invoice_admin, "2026-07"))["data"]
    lines = july_invoice["lines"]
    own = [line for line in lines if "June 2026" not in line["description"]]
    carried = [line for line in lines if "(usage from June 2026)" in line["description"]]
    assert {line["model"] for line in own} == {"llama-3.1-8b"}
    assert {(line["model"], line["kind"]) for line in carried} == {
        ("llama-3.3-70b-online", "input_tokens"),
        ("llama-3.3-70b-online", "output_tokens"),
        ("llama-3.3-70b-online", "search_requests"),
    }
    assert lines[: len(own)] == own  # the month's own usage first
    stored = await exact_line_amounts(clean_db, july_invoice["id"])
    assert sum(row.amount_exact for row in stored) == late.cost + july.cost

    async with httpx.AsyncClient(
        base_url=invoicing.url, headers={"Authorization": f"Bearer {key}"}
    ) as client:
        unchanged = (await client.get(f"/v1/invoices/{june['id']}")).json()
        listed = (await client.get("/v1/invoices")).json()["data"]
    assert unchanged == june
    assert [i["id"] for i in listed] == [july_invoice["id"], june["id"]]  # newest first
    assert listed[0] == july_invoice


async def test_a_key_sees_only_its_own_invoices_and_the_pdf_reads_back(
    invoicing: LiveServer, invoice_admin: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    owner, owner_key = await new_account_with_key(invoice_admin, name="Owner GmbH")
    _, other_key = await new_account_with_key(invoice_admin, name="Other")
    await record(clean_db, june_usage(owner["id"]))
    [invoice] = (await run(invoice_admin, "2026-06"))["data"]

    async with httpx.AsyncClient(base_url=invoicing.url) as http:
        as_owner = {"Authorization": f"Bearer {owner_key}"}
        as_other = {"Authorization": f"Bearer {other_key}"}
        assert (await http.get("/v1/invoices", headers=as_other)).json() == {"data": []}
        for path in (f"/v1/invoices/{invoice['id']}", f"/v1/invoices/{invoice['id']}/pdf"):
            denied = await http.get(path, headers=as_other)
            assert denied.status_code == 404
            assert denied.json()["error"]["type"] == "invalid_request_error"
        assert (await http.get("/v1/invoices/not-an-id", headers=as_owner)).status_code == 404
        assert (await http.get("/v1/invoices")).status_code == 401
        pdf = await http.get(f"/v1/invoices/{invoice['id']}/pdf", headers=as_owner)

    assert pdf.status_code == 200
    assert pdf.headers["content-type"] == "application/pdf"
    assert invoice["number"] in pdf.headers["content-disposition"]
    reader = PdfReader(io.BytesIO(pdf.content))
    content = "\n".join(page.extract_text() for page in reader.pages)
    assert invoice["number"] in content
    assert f"€{invoice['subtotal']}" in content
    assert "Owner GmbH" in content
    assert "2026-06-01 to 2026-06-30" in content
    assert "llama-3.3-70b-online: web search requests (-online)" in content
    assert reader.metadata is not None and reader.metadata.title == f"Invoice {invoice['number']}"


async def test_run_validates_the_period_and_needs_the_admin_token(
    invoicing: LiveServer, invoice_admin: httpx.AsyncClient
) -> None:
    for period in ("2026-13", "June", "2026-6", f"{datetime.now(UTC).year + 1}-01"):
        response = await invoice_admin.post("/admin/invoices/run", json={"period": period})
        assert response.status_code == 400, period
        assert response.json()["error"]["param"] == "period"
    async with httpx.AsyncClient(base_url=invoicing.url) as anonymous:
        denied = await anonymous.post("/admin/invoices/run", json={"period": "2026-06"})
    assert denied.status_code == 401


async def test_monthly_job_waits_for_the_grace_period(
    invoice_admin: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    account, _ = await new_account_with_key(invoice_admin)
    await record(clean_db, june_usage(account["id"])[:1])
    sessionmaker = create_sessionmaker(clean_db)
    config = BillingConfig(invoice_grace=timedelta(hours=72))
    assert await monthly_invoices_job(sessionmaker, config, now=JULY + timedelta(hours=71)) is None
    result = await monthly_invoices_job(sessionmaker, config, now=JULY + timedelta(hours=73))
    assert result is not None and len(result.created) == 1
    assert result.period.label == "2026-06"
    again = await monthly_invoices_job(sessionmaker, config, now=JULY + timedelta(hours=74))
    assert again is not None and again.created == []


async def test_cli_run_and_unitemised_usage(
    invoice_admin: httpx.AsyncClient, clean_db: AsyncEngine, database_url: str
) -> None:
    account, _ = await new_account_with_key(invoice_admin)
    bare = priced_event(
        account["id"], JUNE + timedelta(days=1), "llama-3.1-8b", Usage(prompt_tokens=1)
    )
    # An event stored without itemised lines (e.g. from an older writer) is still billed.
    bare = msgspec.structs.replace(bare, charge=msgspec.Raw(b"[]"), cost=Decimal("0.125"))
    await record(clean_db, [bare])
    result = await asyncio.to_thread(
        run_period_blocking, database_url, make_settings(database_url), "2026-06"
    )
    assert result["created"] == 1
    [line] = result["data"][0]["lines"]
    assert (line["kind"], line["quantity"], line["unit_price"], line["amount"]) == (
        "usage",
        1,
        "0.125",
        "0.13",
    )
