"""Admin API for accounts, keys and credits, against a live gateway and a real database."""

from __future__ import annotations

import asyncio

import httpx
from click.testing import CliRunner

from app import cli
from tests.conftest import new_account_with_key


async def test_create_and_get_account(admin: httpx.AsyncClient) -> None:
    response = await admin.post("/admin/accounts", json={"name": "Acme", "email": "ops@acme.test"})
    assert response.status_code == 201
    account = response.json()
    assert account["name"] == "Acme"
    assert account["balance"] == "0.00"
    assert account["available"] == "0.00"
    assert account["currency"] == "EUR"
    assert account["tier"] == {"name": "free", "rpm": 20, "tpm": 40000}
    assert account["next_tier"] == {
        "name": "standard",
        "min_total_purchased": "5.00",
        "rpm": 50,
        "tpm": 100000,
    }
    fetched = await admin.get(f"/admin/accounts/{account['id']}")
    assert fetched.status_code == 200
    assert fetched.json() == account


async def test_unknown_account_is_openai_shaped_404(admin: httpx.AsyncClient) -> None:
    for account_id in ("8d6f4a43-5cc5-4d55-9a3c-3f0c8b3d7c11", "not-a-uuid"):
        response = await admin.get(f"/admin/accounts/{account_id}")
        assert response.status_code == 404
        assert response.json()["error"]["type"] == "invalid_request_error"


async def test_key_is_shown_once_and_authenticates(
    admin: httpx.AsyncClient, client: httpx.AsyncClient
) -> None:
    account, key = await new_account_with_key(admin)
    assert key.startswith("tg-") and len(key) >= 3 + 32
    response = await client.get("/v1/account", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200
    assert response.json()["id"] == account["id"]


async def test_key_create_returns_prefix_not_hash(admin: httpx.AsyncClient) -> None:
    account, _ = await new_account_with_key(admin)
    response = await admin.post(f"/admin/accounts/{account['id']}/keys", json={"name": "ci"})
    body = response.json()
    assert response.status_code == 201
    assert set(body) >= {"id", "key", "prefix"}
    assert body["key"].startswith(body["prefix"])
    assert body["name"] == "ci"


async def test_revoked_key_is_refused_within_a_second(
    admin: httpx.AsyncClient, client: httpx.AsyncClient
) -> None:
    account, _ = await new_account_with_key(admin)
    created = (await admin.post(f"/admin/accounts/{account['id']}/keys", json={})).json()
    headers = {"Authorization": f"Bearer {created['key']}"}
    assert (await client.get("/v1/account", headers=headers)).status_code == 200
    revoked = await admin.delete(f"/admin/keys/{created['id']}")
    assert revoked.status_code == 200
    assert revoked.json()["revoked"] is True
    await asyncio.sleep(1.05)  # the identity cache lives at most one second
    response = await client.get("/v1/account", headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


async def test_a_revoked_key_is_refused_at_once_by_the_instance_that_revoked_it(
    admin: httpx.AsyncClient, client: httpx.AsyncClient
) -> None:
    """The key cache (up to a second) forgets the key when its revocation commits."""
    account, _ = await new_account_with_key(admin)
    created = (await admin.post(f"/admin/accounts/{account['id']}/keys", json={})).json()
    headers = {"Authorization": f"Bearer {created['key']}"}
    for _ in range(3):  # cached now
        assert (await client.get("/v1/account", headers=headers)).status_code == 200
    revoked = await admin.delete(f"/admin/keys/{created['id']}")
    assert revoked.status_code == 200 and revoked.json()["revoked"] is True
    response = await client.get("/v1/account", headers=headers)
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == "invalid_api_key"
    # Revoking again changes nothing and the key stays refused.
    assert (await admin.delete(f"/admin/keys/{created['id']}")).status_code == 200
    assert (await client.get("/v1/account", headers=headers)).status_code == 401


async def test_missing_unknown_and_malformed_keys_are_401(client: httpx.AsyncClient) -> None:
    for headers in (
        {},
        {"Authorization": "Bearer tg-" + "x" * 43},
        {"Authorization": "Basic abc"},
        {"Authorization": "Bearer sk-something"},
    ):
        response = await client.get("/v1/account", headers=headers)
        assert response.status_code == 401, headers
        error = response.json()["error"]
        assert error["code"] == "invalid_api_key"
        assert error["type"] == "invalid_request_error"


async def test_admin_token_required(client: httpx.AsyncClient) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "test-admin-token"}):
        response = await client.post("/admin/accounts", json={"name": "x"}, headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key"


async def test_customer_key_is_not_an_admin_token(
    admin: httpx.AsyncClient, client: httpx.AsyncClient
) -> None:
    _, key = await new_account_with_key(admin)
    response = await client.post(
        "/admin/accounts", json={"name": "x"}, headers={"Authorization": f"Bearer {key}"}
    )
    assert response.status_code == 401


async def test_credits_are_idempotent_by_reference(admin: httpx.AsyncClient) -> None:
    account, _ = await new_account_with_key(admin)
    body = {"amount": "10.00", "kind": "purchase", "reference": "order-1"}
    responses = await asyncio.gather(
        *(admin.post(f"/admin/accounts/{account['id']}/credits", json=body) for _ in range(8))
    )
    assert all(r.status_code == 201 for r in responses)
    assert sum(r.json()["created"] for r in responses) == 1
    fetched = (await admin.get(f"/admin/accounts/{account['id']}")).json()
    assert fetched["balance"] == "10.00"
    assert fetched["total_purchased"] == "10.00"
    assert fetched["tier"]["name"] == "standard"


async def test_grant_does_not_raise_tier_and_tiny_amounts_are_exact(
    admin: httpx.AsyncClient,
) -> None:
    account, _ = await new_account_with_key(admin)
    url = f"/admin/accounts/{account['id']}/credits"
    assert (await admin.post(url, json={"amount": "500", "kind": "grant"})).status_code == 201
    assert (await admin.post(url, json={"amount": "0.003", "kind": "purchase"})).status_code == 201
    fetched = (await admin.get(f"/admin/accounts/{account['id']}")).json()
    assert fetched["balance"] == "500.003"
    assert fetched["total_purchased"] == "0.003"
    assert fetched["tier"]["name"] == "free"


async def test_bad_credit_bodies_are_400_and_change_nothing(admin: httpx.AsyncClient) -> None:
    account, _ = await new_account_with_key(admin)
    url = f"/admin/accounts/{account['id']}/credits"
    for body, param in (
        ({"amount": "-1"}, "amount"),
        ({"amount": "0"}, "amount"),
        ({"amount": 1.5}, "amount"),
        ({"amount": "ten"}, "amount"),
        ({"amount": "NaN"}, "amount"),
        ({"amount": "0.0000000000001"}, "amount"),  # would be stored as 0: never rounded
        ({"amount": "1e26"}, "amount"),  # beyond what the ledger holds
        ({"amount": "1", "kind": "refund"}, "kind"),
        ({"amount": "1", "colour": "red"}, "colour"),
        ({}, "amount"),
        ({"amount": "1", "reference": "r\x00"}, "reference"),  # Postgres text cannot hold NUL
        ({"amount": "1", "description": "\x00"}, "description"),
    ):
        response = await admin.post(url, json=body)
        assert response.status_code == 400, (body, response.text)
        assert response.json()["error"]["param"] == param, (body, response.json())
    fetched = (await admin.get(f"/admin/accounts/{account['id']}")).json()
    assert fetched["balance"] == "0.00"


async def test_a_nul_in_stored_text_is_400_not_a_database_error(admin: httpx.AsyncClient) -> None:
    for body, param in (({"name": "a\x00b"}, "name"), ({"name": "A", "email": "\x00"}, "email")):
        response = await admin.post("/admin/accounts", json=body)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == param
    account, _ = await new_account_with_key(admin)
    response = await admin.post(f"/admin/accounts/{account['id']}/keys", json={"name": "k\x00"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "name"


# Not plain decimals within the ledger's numeric(38, 12), exactly (tests/test_money.py has more).
OUT_OF_BOUNDS: list[object] = [
    "1e30",
    "1E+2",
    "1e-20",
    "1e999999999999999999",
    "Infinity",
    "-Infinity",
    "sNaN",
    "1_000",
    "١٢",
    "1" + "0" * 26,
    "0.0000000000001",
    10**30,
]


async def test_credits_beyond_the_ledger_or_not_plain_decimals_are_400(
    admin: httpx.AsyncClient,
) -> None:
    account, _ = await new_account_with_key(admin)
    url = f"/admin/accounts/{account['id']}/credits"
    for amount in OUT_OF_BOUNDS:
        for kind in ("purchase", "grant"):
            response = await admin.post(url, json={"amount": amount, "kind": kind})
            assert response.status_code == 400, (amount, response.text)
            error = response.json()["error"]
            assert (error["type"], error["param"]) == ("invalid_request_error", "amount"), error
    largest = "9" * 26 + "." + "9" * 12
    assert (await admin.post(url, json={"amount": largest, "kind": "grant"})).status_code == 201
    fetched = (await admin.get(f"/admin/accounts/{account['id']}")).json()
    assert fetched["balance"] == largest


async def test_cli_credits_add_refuses_what_the_api_refuses(
    admin: httpx.AsyncClient, database_url: str
) -> None:
    account, _ = await new_account_with_key(admin)
    runner = CliRunner()
    env = {"DATABASE_URL": database_url}
    for amount in OUT_OF_BOUNDS:
        args = ["credits", "add", account["id"], str(amount)]
        result = await asyncio.to_thread(runner.invoke, cli.main, args, env=env)
        assert result.exit_code == 2, (amount, result.output)  # click's bad-parameter exit
        assert "AMOUNT" in result.output, result.output
    args = ["credits", "add", account["id"], "0.003", "--json"]
    result = await asyncio.to_thread(runner.invoke, cli.main, args, env=env)
    assert result.exit_code == 0, result.output
    fetched = (await admin.get(f"/admin/accounts/{account['id']}")).json()
    assert fetched["balance"] == "0.003"
