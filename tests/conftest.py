"""Shared fixtures: a real PostgreSQL database per run, real servers on loopback."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import Settings
from app.db import migrate
from app.db.base import Base
from app.db.engine import create_engine
from app.main import create_app
from tests.support import database
from tests.support.live import LiveServer

ADMIN_TOKEN = "test-admin-token"


@pytest.fixture(scope="session")
async def pg_server() -> str:
    url, source = await database.server_url()
    print(f"\nPostgreSQL for tests: {source}")
    return url


@pytest.fixture(scope="session")
async def database_url(pg_server: str) -> AsyncIterator[str]:
    url = await database.create_database(pg_server)
    await asyncio.to_thread(migrate.upgrade, url)
    yield url
    await database.drop_database(pg_server, url)


@pytest.fixture(scope="session")
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url, pool_size=4)
    yield engine
    await engine.dispose()


@pytest.fixture
async def clean_db(engine: AsyncEngine) -> AsyncEngine:
    """Each test starts from empty tables (schema and migrations stay)."""
    tables = ", ".join(f'"{table.name}"' for table in Base.metadata.sorted_tables)
    # The last test's gateway may still be settling a request its client left (a stream cut
    # short): TRUNCATE locks table by table and can deadlock with that settlement. Postgres
    # aborts one of the two; the writer retries its own, and so does this.
    for attempt in range(5):
        try:
            async with engine.begin() as connection:
                await connection.execute(text(f"TRUNCATE {tables} CASCADE"))
            break
        except DBAPIError as exc:
            if attempt == 4 or getattr(exc.orig, "sqlstate", None) != "40P01":
                raise
            await asyncio.sleep(0.1)
    return engine


def make_settings(database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "DATABASE_URL": database_url,
        "TOLLGATE_ADMIN_TOKEN": ADMIN_TOKEN,
        "TOLLGATE_SCHEDULER": False,
        # The outbox's worker only where a test asks for it: another test's gateway, still
        # running, would otherwise deliver (or not email) what this one's should.
        "TOLLGATE_NOTIFICATIONS": False,
        # Many tests end by checking that nothing is held once their responses have ended,
        # which a busy account's credit lease (by design) is until it idles: those tests see
        # per-request holds, and tests/gateway/test_credit_leases.py runs gateways with leases on.
        "TOLLGATE_CREDIT_LEASE_REQUESTS": 0,
        "UPSTREAM_BASE_URL": "http://127.0.0.1:9/v1",
        "UPSTREAM_API_KEY": "upstream-secret",
    }
    values.update(overrides)
    return Settings(**values)


class Gateways:
    """Live gateways by settings, started once per test session and reused."""

    # Each gateway keeps a few idle database connections: beyond this many, the least recently
    # used one stops, so a long run (a gateway per upstreams file, say) stays under the
    # server's max_connections.
    MAX_RUNNING = 8

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self._running: OrderedDict[tuple[tuple[str, str], ...], LiveServer] = OrderedDict()

    def get(self, **overrides: Any) -> LiveServer:
        key = tuple(sorted((k, str(v)) for k, v in overrides.items()))
        if key in self._running:
            self._running.move_to_end(key)
        else:
            app = create_app(make_settings(self.database_url, **overrides))
            self._running[key] = LiveServer(app).start()
            while len(self._running) > self.MAX_RUNNING:
                _, oldest = self._running.popitem(last=False)
                oldest.stop()
        return self._running[key]

    def stop_all(self) -> None:
        for server in self._running.values():
            server.stop()
        self._running.clear()

    def stop_notifying(self) -> None:
        """Stop the gateways whose outbox worker runs (a test that must be the only sender)."""
        for key in [k for k in self._running if ("TOLLGATE_NOTIFICATIONS", "True") in k]:
            self._running.pop(key).stop()


@pytest.fixture(scope="session")
def gateways(database_url: str) -> Iterator[Gateways]:
    running = Gateways(database_url)
    yield running
    running.stop_all()


@pytest.fixture
def gateway(gateways: Gateways, clean_db: AsyncEngine) -> LiveServer:
    return gateways.get()


@pytest.fixture
async def admin(gateway: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=gateway.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    ) as client:
        yield client


@pytest.fixture
async def client(gateway: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        yield client


async def new_account_with_key(
    admin: httpx.AsyncClient, name: str = "Acme", credit: str | None = None
) -> tuple[dict[str, Any], str]:
    """Create an account (optionally with purchased credit) and one key; returns both."""
    response = await admin.post("/admin/accounts", json={"name": name})
    assert response.status_code == 201, response.text
    account = response.json()
    if credit is not None:
        response = await admin.post(
            f"/admin/accounts/{account['id']}/credits", json={"amount": credit, "kind": "purchase"}
        )
        assert response.status_code == 201, response.text
    response = await admin.post(f"/admin/accounts/{account['id']}/keys", json={})
    assert response.status_code == 201, response.text
    return account, response.json()["key"]
