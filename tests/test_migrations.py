"""Migrations build the schema from nothing, and the models never drift from them."""

from __future__ import annotations

import asyncio
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.engine import Connection

from app.db import migrate
from app.db.base import Base, include_in_autogenerate
from app.db.engine import create_engine
from tests.support import database

ROLLUP_COSTS = ("costed_requests", "upstream_cost", "margin")


def _diff(connection: Connection) -> list[object]:
    context = MigrationContext.configure(
        connection, opts={"compare_type": True, "include_name": include_in_autogenerate}
    )
    return list(compare_metadata(context, Base.metadata))


async def test_upgrade_empty_database_to_head_without_drift(pg_server: str) -> None:
    url = await database.create_database(pg_server)
    try:
        await asyncio.to_thread(migrate.upgrade, url)
        await asyncio.to_thread(migrate.upgrade, url)  # a second run is a no-op
        engine = create_engine(url, pool_size=1)
        try:
            async with engine.connect() as connection:
                assert await connection.run_sync(_diff) == []
                version = await connection.scalar(text("SELECT version_num FROM alembic_version"))
                assert version is not None
        finally:
            await engine.dispose()
    finally:
        await database.drop_database(pg_server, url)


async def _columns(connection: Any, table: str) -> dict[str, str]:
    rows = await connection.execute(
        text(
            "SELECT column_name, is_nullable FROM information_schema.columns"
            " WHERE table_name = :table"
        ),
        {"table": table},
    )
    return {row.column_name: row.is_nullable for row in rows}


async def test_0012_adds_upstream_costs_to_events_and_rollups_and_downgrades(
    pg_server: str,
) -> None:
    url = await database.create_database(pg_server)
    engine = create_engine(url, pool_size=1)
    try:
        await asyncio.to_thread(migrate.upgrade, url, "0011")
        async with engine.begin() as connection:
            # A partition and a bucket made before the revision.
            await connection.execute(text("SELECT ensure_usage_events_partition('2026-01-01')"))
            await connection.execute(
                text(
                    "INSERT INTO usage_rollups VALUES (gen_random_uuid(), 15, now(), 'm', 'e',"
                    " gen_random_uuid(), '', 'EUR', NULL, 2, 10, 0, 5, 0, 0, 0, 0.000003)"
                )
            )
        await asyncio.to_thread(migrate.upgrade, url)
        async with engine.connect() as connection:
            for table in ("usage_events", "usage_events_2026_01"):
                assert (await _columns(connection, table))["upstream_cost"] == "YES"
            rollup_columns = await _columns(connection, "usage_rollups")
            assert all(rollup_columns[c] == "NO" for c in ROLLUP_COSTS)
            # Existing buckets hold only events without a known cost: none of them counted.
            existing = (
                await connection.execute(
                    text(f"SELECT {', '.join(ROLLUP_COSTS)} FROM usage_rollups")
                )
            ).one()
            assert tuple(existing) == (0, 0, 0)
        await asyncio.to_thread(command.downgrade, migrate.alembic_config(url), "0011")
        async with engine.connect() as connection:
            assert "upstream_cost" not in await _columns(connection, "usage_events_2026_01")
            assert not set(ROLLUP_COSTS) & (await _columns(connection, "usage_rollups")).keys()
            assert await connection.scalar(text("SELECT count(*) FROM usage_rollups")) == 1
        await asyncio.to_thread(migrate.upgrade, url)
        async with engine.connect() as connection:
            assert await connection.run_sync(_diff) == []
    finally:
        await engine.dispose()
        await database.drop_database(pg_server, url)
