"""Migrations build the schema from nothing, and the models never drift from them."""

from __future__ import annotations

import asyncio

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.engine import Connection

from app.db import migrate
from app.db.base import Base, include_in_autogenerate
from app.db.engine import create_engine
from tests.support import database


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
