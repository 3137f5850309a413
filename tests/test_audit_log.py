"""The audit log (SPEC 5, 12): every admin API and CLI change, in the change's transaction."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
from click.testing import CliRunner
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.cli import main
from tests.conftest import new_account_with_key


async def _log(admin: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    response = await admin.get("/admin/audit-log", params=params)
    assert response.status_code == 200, response.text
    return response.json()


async def test_admin_changes_are_recorded_with_actor_ids_and_values(
    admin: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    account, _ = await new_account_with_key(admin, credit="3.00")
    await admin.patch(f"/admin/accounts/{account['id']}", json={"email": "ops@example.com"})
    other, _ = await new_account_with_key(admin, name="Other")
    log = await _log(admin)
    assert [e["action"] for e in log["data"]] == [
        "key.created",
        "account.created",
        "account.updated",
        "key.created",
        "credit.added",
        "account.created",
    ]
    assert {e["actor"] for e in log["data"]} == {"admin-token"}
    assert all(e["client_address"] == "127.0.0.1" for e in log["data"])
    updated = log["data"][2]
    assert updated["before"]["email"] is None and updated["after"]["email"] == "ops@example.com"
    credit = log["data"][4]
    assert credit["account_id"] == account["id"] and credit["after"]["amount"] == "3.00"
    # Filters, and pages newest first.
    mine = await _log(admin, account_id=account["id"])
    assert len(mine["data"]) == 4 and all(e["account_id"] == account["id"] for e in mine["data"])
    assert [e["account_id"] for e in (await _log(admin, action="account.created"))["data"]] == [
        other["id"],
        account["id"],
    ]
    first = await _log(admin, limit=4)
    assert first["has_more"] is True and len(first["data"]) == 4
    rest = await _log(admin, limit=4, before=first["next_before"])
    assert rest["has_more"] is False
    assert [e["id"] for e in first["data"] + rest["data"]] == [e["id"] for e in log["data"]]
    assert (await _log(admin, actor="cli"))["data"] == []


async def test_a_refused_change_records_nothing(
    admin: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    account, _ = await new_account_with_key(admin)
    before = len((await _log(admin))["data"])
    bad = await admin.post(f"/admin/accounts/{account['id']}/credits", json={"amount": "-1"})
    assert bad.status_code == 400
    bad = await admin.patch(
        f"/admin/accounts/{account['id']}", json={"user_spend_limit": {"amount": "x"}}
    )
    assert bad.status_code == 400
    # A repeated reference credits nothing, so it records nothing either.
    body = {"amount": "1.00", "reference": "once"}
    assert (await admin.post(f"/admin/accounts/{account['id']}/credits", json=body)).json()[
        "created"
    ]
    assert not (await admin.post(f"/admin/accounts/{account['id']}/credits", json=body)).json()[
        "created"
    ]
    assert len((await _log(admin))["data"]) == before + 1
    for params in ({"limit": 0}, {"action": "nope"}, {"account_id": "x"}, {"before": "never"}):
        assert (await admin.get("/admin/audit-log", params=params)).status_code == 400
    assert (
        await admin.get("/admin/audit-log", headers={"Authorization": "Bearer no"})
    ).status_code == 401


async def test_cli_changes_are_recorded_as_cli(
    database_url: str, admin: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    runner = CliRunner()
    env = {"DATABASE_URL": database_url}
    created = await asyncio.to_thread(
        runner.invoke, main, ["accounts", "create", "--name", "Cli", "--json"], env=env
    )
    assert created.exit_code == 0, created.output
    account_id = json.loads(created.output)["id"]
    keyed = await asyncio.to_thread(
        runner.invoke,
        main,
        ["keys", "create", account_id, "--spend-limit", "2.00", "--period", "week", "--json"],
        env=env,
    )
    assert keyed.exit_code == 0, keyed.output
    log = await _log(admin, actor="cli")
    assert [e["action"] for e in log["data"]] == ["key.created", "account.created"]
    assert log["data"][0]["after"]["spend_limit"]["period"] == "week"
    async with clean_db.connect() as connection:
        assert await connection.scalar(text("SELECT count(*) FROM spend_counters")) == 1
