"""Amounts from customers that the ledger's columns cannot hold exactly, or that are no plain
decimal, are a 400 naming the field, in OpenAI's error shape, and change nothing: the top-up
(`POST /v1/billing/checkout`) and auto-recharge (`POST /v1/billing/auto_recharge`)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.payments.test_auto_recharge import save_card
from tests.support.fake_stripe import FakeStripe
from tests.support.live import LiveServer

Customer = tuple[dict[str, Any], httpx.AsyncClient]

# Neither a plain decimal nor within numeric(38, 12), exactly.
OUT_OF_BOUNDS: list[object] = [
    "1e27",
    "1E+3",
    "1e-20",
    "1E-20",
    "1e999999999999999999",
    "NaN",
    "sNaN",
    "Infinity",
    "-Infinity",
    "1_000",
    "١٢",
    "1" + "0" * 26,
    "1" + "0" * 30,
    "0.0000000000001",
    "5.0000000000001",
    10**30,
    -(10**30),
    1e27,
]


async def tables(engine: AsyncEngine) -> list[Any]:
    async with engine.connect() as connection:
        return [
            list(await connection.execute(text(query)))
            for query in (
                "SELECT id, balance, total_purchased FROM accounts ORDER BY id",
                "SELECT account_id, reference, amount FROM ledger_entries ORDER BY reference",
                "SELECT account_id, enabled, threshold, amount, failures, retry_after, updated_at "
                "FROM auto_recharge_settings ORDER BY account_id",
                "SELECT account_id, id, status FROM recharge_attempts ORDER BY id",
                "SELECT account_id, customer_id, payment_method_id FROM stripe_customers "
                "ORDER BY account_id",
            )
        ]


def assert_openai_400(response: httpx.Response, param: str) -> None:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param, error
    assert error["message"]


@pytest.mark.parametrize("amount", OUT_OF_BOUNDS, ids=repr)
async def test_top_up_amount_out_of_bounds_is_400(
    customer: Customer, fake_stripe: FakeStripe, clean_db: AsyncEngine, amount: object
) -> None:
    _, client = customer
    before = await tables(clean_db)
    response = await client.post("/v1/billing/checkout", json={"amount": amount})
    assert_openai_400(response, "amount")
    assert fake_stripe.calls("/v1/checkout/sessions") == []
    assert await tables(clean_db) == before


@pytest.mark.parametrize("field", ["threshold", "amount"])
@pytest.mark.parametrize("value", OUT_OF_BOUNDS, ids=repr)
async def test_auto_recharge_value_out_of_bounds_is_400_and_keeps_the_settings(
    billing: LiveServer,
    customer: Customer,
    fake_stripe: FakeStripe,
    clean_db: AsyncEngine,
    field: str,
    value: object,
) -> None:
    """`"1e30"` used to overflow the threshold's numeric(38, 12) (a 500) and `"1E-20"` to be
    stored as 0.00: a threshold must fit its column exactly."""
    account, client = customer
    await save_card(billing, client, account)
    saved = await client.post(
        "/v1/billing/auto_recharge", json={"enabled": False, "threshold": "5", "amount": "20"}
    )
    assert saved.status_code == 200, saved.text
    view = (await client.get("/v1/billing/auto_recharge")).json()
    before = await tables(clean_db)
    calls = len(fake_stripe.requests)
    for enabled in (False, True):
        body = {"enabled": enabled, "threshold": "5", "amount": "20", field: value}
        response = await client.post("/v1/billing/auto_recharge", json=body)
        assert_openai_400(response, field)
    assert (await client.get("/v1/billing/auto_recharge")).json() == view
    assert await tables(clean_db) == before
    assert len(fake_stripe.requests) == calls


async def test_the_largest_threshold_the_column_holds_is_kept_exactly(
    customer: Customer, clean_db: AsyncEngine
) -> None:
    _, client = customer
    largest = "9" * 26 + "." + "9" * 12
    for threshold in (largest, "0.000000000001", "0"):
        response = await client.post(
            "/v1/billing/auto_recharge", json={"enabled": False, "threshold": threshold}
        )
        assert response.status_code == 200, response.text
        assert Decimal(response.json()["threshold"]) == Decimal(threshold)
    async with clean_db.connect() as connection:
        stored = await connection.scalar(text("SELECT threshold FROM auto_recharge_settings"))
    assert stored == 0
