"""The dashboard's forms against input the ledger cannot hold, over plain HTTP: top-up and
auto-recharge amounts are explained on the page (400) and change nothing; revoking a key
stops it at once on this instance."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import text

from app.db.engine import create_engine
from tests.conftest import new_account_with_key
from tests.dashboard.conftest import Customer, Dashboard
from tests.dashboard.test_security import TOKEN_RE, _sign_in

OUT_OF_BOUNDS = ["1e27", "1E-20", "1e30", "NaN", "Infinity", "1" + "0" * 30, "0.0000000000001"]


async def _token(client: httpx.AsyncClient, path: str) -> str:
    page = await client.get(path)
    assert page.status_code == 200, page.text
    match = TOKEN_RE.search(page.text)
    assert match, page.text
    return match.group(1)


async def _settings(database_url: str, account_id: str) -> list[Any]:
    engine = create_engine(database_url, pool_size=1)
    try:
        async with engine.connect() as connection:
            result = await connection.execute(
                text(
                    "SELECT enabled, threshold, amount, updated_at FROM auto_recharge_settings "
                    "WHERE account_id = :id"
                ),
                {"id": account_id},
            )
            return list(result)
    finally:
        await engine.dispose()


@pytest.mark.parametrize("amount", OUT_OF_BOUNDS)
async def test_a_top_up_the_ledger_cannot_hold_is_explained(
    dashboard: Dashboard, customer: Customer, amount: str
) -> None:
    async with httpx.AsyncClient(base_url=dashboard.url) as client:
        await _sign_in(client, customer.key)
        token = await _token(client, "/dashboard/topup")
        before = len(dashboard.stripe.calls("/v1/checkout/sessions"))
        response = await client.post(
            "/dashboard/topup", data={"amount": amount, "_csrf_token": token}
        )
        assert response.status_code == 400, response.text
        assert "amount" in response.text
        assert len(dashboard.stripe.calls("/v1/checkout/sessions")) == before


@pytest.mark.parametrize("field", ["threshold", "amount"])
@pytest.mark.parametrize("value", OUT_OF_BOUNDS)
async def test_auto_recharge_values_the_ledger_cannot_hold_are_explained(
    dashboard: Dashboard, customer: Customer, database_url: str, field: str, value: str
) -> None:
    async with httpx.AsyncClient(base_url=dashboard.url) as client:
        await _sign_in(client, customer.key)
        token = await _token(client, "/dashboard/auto-recharge")
        saved = await client.post(
            "/dashboard/auto-recharge",
            data={"threshold": "5", "amount": "20", "_csrf_token": token},
        )
        assert saved.status_code == 303, saved.text
        before = await _settings(database_url, customer.id)
        assert len(before) == 1
        token = await _token(client, "/dashboard/auto-recharge")
        form = {"threshold": "5", "amount": "20", field: value, "_csrf_token": token}
        response = await client.post("/dashboard/auto-recharge", data=form)
        assert response.status_code == 400, response.text
        assert field in response.text
        assert await _settings(database_url, customer.id) == before


async def test_a_key_revoked_in_the_dashboard_is_refused_at_once(
    dashboard: Dashboard, customer: Customer, operator: httpx.AsyncClient
) -> None:
    created = (await operator.post(f"/admin/accounts/{customer.id}/keys", json={})).json()
    headers = {"Authorization": f"Bearer {created['key']}"}
    async with httpx.AsyncClient(base_url=dashboard.url) as client:
        for _ in range(3):  # cached now
            assert (await client.get("/v1/account", headers=headers)).status_code == 200
        await _sign_in(client, customer.key)
        token = await _token(client, "/dashboard/keys")
        revoked = await client.post(
            f"/dashboard/keys/{created['id']}/revoke", data={"_csrf_token": token}
        )
        assert revoked.status_code == 303, revoked.text
        response = await client.get("/v1/account", headers=headers)
        assert response.status_code == 401, response.text
        # The key the session signed in with still works.
        other = {"Authorization": f"Bearer {customer.key}"}
        assert (await client.get("/v1/account", headers=other)).status_code == 200


async def test_the_overview_shows_a_balance_of_any_size(
    dashboard: Dashboard, operator: httpx.AsyncClient
) -> None:
    """money_str used to raise past 28 digits (the decimal context), which broke pages."""
    largest = "9" * 26 + "." + "9" * 12
    _, key = await new_account_with_key(operator, credit=largest)
    async with httpx.AsyncClient(base_url=dashboard.url) as client:
        await _sign_in(client, key)
        page = await client.get("/dashboard/")
        assert page.status_code == 200, page.text
        status = await client.get("/dashboard/topup/status?session_id=cs_x")
        assert status.json()["balance"] == largest
