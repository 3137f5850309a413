"""Gateway fixtures: a fake upstream on loopback, a gateway pointed at it, funded keys."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import Gateways, new_account_with_key
from tests.support.live import LiveServer
from tests.support.upstream import FakeUpstream

FIXTURE_PRICING = Path(__file__).resolve().parents[1] / "fixtures" / "pricing"


@pytest.fixture(scope="session")
def upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream().start()
    yield fake
    fake.stop()


@pytest.fixture
def proxy(gateways: Gateways, upstream: FakeUpstream, clean_db: AsyncEngine) -> LiveServer:
    upstream.reset()
    return gateways.get(UPSTREAM_BASE_URL=upstream.url, TOLLGATE_PRICING_DIR=FIXTURE_PRICING)


@pytest.fixture
async def funded(admin: httpx.AsyncClient) -> tuple[dict[str, Any], str]:
    """An account with €10.00 purchased (the `standard` tier) and its key."""
    return await new_account_with_key(admin, credit="10.00")


@pytest.fixture
def sdk(proxy: LiveServer, funded: tuple[dict[str, Any], str]) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key=funded[1], max_retries=0)


@pytest.fixture
async def raw(
    proxy: LiveServer, funded: tuple[dict[str, Any], str]
) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=proxy.url, headers={"Authorization": f"Bearer {funded[1]}"}, timeout=30
    ) as client:
        yield client


async def events(engine: AsyncEngine, account_id: str) -> list[Any]:
    async with engine.connect() as connection:
        result = await connection.execute(
            text("SELECT * FROM usage_events WHERE account_id = :id ORDER BY time"),
            {"id": account_id},
        )
        return list(result)


async def totals(engine: AsyncEngine, account_id: str) -> Any:
    async with engine.connect() as connection:
        return (
            await connection.execute(
                text(
                    "SELECT balance, held, total_usage,"
                    " (SELECT coalesce(sum(amount), 0) FROM ledger_entries l"
                    "   WHERE l.account_id = a.id) AS ledger,"
                    " (SELECT count(*) FROM holds h WHERE h.account_id = a.id) AS holds"
                    " FROM accounts a WHERE id = :id"
                ),
                {"id": account_id},
            )
        ).one()
