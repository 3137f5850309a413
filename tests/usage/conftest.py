"""Fixtures of the usage tests: a live gateway with the usage and ingestion routes, clients,
and helpers to ingest events, query usage and run the rollup job now."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from litestar import Litestar
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import DEFAULT_PRICING_DIR
from app.jobs import Job, run_job
from app.main import create_app
from app.usage.rollups import RollupRun, roll_up
from tests.conftest import ADMIN_TOKEN, make_settings
from tests.support.live import LiveServer

# A second price version from 2025-06-01 for the "rates in force at the event time" tests.
LATER_PRICES = """
currency = "EUR"
effective_from = 2025-06-01

[suffixes]
"-online" = 7.00

[models."llama-3.1-8b"]
owned_by = "meta"
input = 0.30
output = 0.60
"""


def usage_app(database_url: str, **overrides: Any) -> Litestar:
    return create_app(make_settings(database_url, **overrides))


@pytest.fixture(scope="session")
def usage_servers(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, LiveServer]]:
    pricing = tmp_path_factory.mktemp("pricing")
    for name in ("camocopy-2025-01-01.toml", "tiers.toml"):
        shutil.copy(DEFAULT_PRICING_DIR / name, pricing / name)
    (pricing / "later-2025-06-01.toml").write_text(LATER_PRICES, encoding="utf-8")
    servers = {
        "default": LiveServer(usage_app(database_url)).start(),
        "repriced": LiveServer(usage_app(database_url, TOLLGATE_PRICING_DIR=str(pricing))).start(),
    }
    yield servers
    for server in servers.values():
        server.stop()


@pytest.fixture
def usage_server(usage_servers: dict[str, LiveServer], clean_db: AsyncEngine) -> LiveServer:
    return usage_servers["default"]


@pytest.fixture
async def admin(usage_server: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=usage_server.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=60
    ) as client:
        yield client


@pytest.fixture
async def client(usage_server: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=usage_server.url, timeout=60) as client:
        yield client


class Customer:
    """An account with one API key, and the calls a test makes for it."""

    def __init__(
        self, account: dict[str, Any], key: str, key_id: str, client: httpx.AsyncClient
    ) -> None:
        self.account = account
        self.id: str = account["id"]
        self.key = key
        self.key_id = key_id
        self.client = client

    async def usage(self, **body: Any) -> dict[str, Any]:
        response = await self.client.post(
            "/v1/usage/completions", json=body, headers={"Authorization": f"Bearer {self.key}"}
        )
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    def event(self, time: str, **fields: Any) -> dict[str, Any]:
        """An ingestible event of this account (llama-3.1-8b, 1,000 + 500 tokens by default)."""
        return {
            "id": fields.pop("id", uuid.uuid4().hex),
            "account_id": self.id,
            "time": time,
            "model": "llama-3.1-8b",
            "endpoint": "/v1/chat/completions",
            "prompt_tokens": 1000,
            "completion_tokens": 500,
            **fields,
        }


async def new_customer(
    admin: httpx.AsyncClient, client: httpx.AsyncClient, name: str = "Acme"
) -> Customer:
    response = await admin.post("/admin/accounts", json={"name": name})
    assert response.status_code == 201, response.text
    account = response.json()
    response = await admin.post(f"/admin/accounts/{account['id']}/keys", json={})
    assert response.status_code == 201, response.text
    return Customer(account, response.json()["key"], response.json()["id"], client)


async def ingest(admin: httpx.AsyncClient, events: list[dict[str, Any]]) -> dict[str, Any]:
    response = await admin.post("/admin/events", json={"events": events})
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def roll_up_now(engine: AsyncEngine, *, catch_up: bool = True) -> RollupRun:
    """Rollup runs through the job wrapper (lock included), without the horizon lag, until
    every event committed before the call is folded (`catch_up`; otherwise one run): a
    transaction open elsewhere in the database (another test's server, a moment) rightly holds
    the horizon back. One run, summed over the runs it took."""
    async with engine.connect() as connection:
        called = await connection.scalar(text("SELECT clock_timestamp()"))
    runs: list[RollupRun] = []

    async def body(connection: Any) -> RollupRun:
        run = await roll_up(connection, lag_seconds=0)
        runs.append(run)
        return run

    for _ in range(100):
        assert await run_job(engine, Job("usage_rollups", None, body))
        if not catch_up or (runs[-1].until or runs[-1].since or called) >= called:
            return RollupRun(
                runs[0].since,
                runs[-1].until,
                sum(run.events for run in runs),
                sum(run.buckets for run in runs),
            )
        await asyncio.sleep(0.05)
    raise AssertionError(f"the rollup horizon stayed behind {called}: {runs[-1]}")
