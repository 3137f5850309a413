"""A PostgreSQL server for the test run: TEST_DATABASE_URL / DATABASE_URL when reachable,
else the embedded one; each run gets a fresh database of its own."""

from __future__ import annotations

import asyncio
import os
import tempfile
import uuid
from pathlib import Path

import asyncpg
from sqlalchemy.engine import make_url


async def _reachable(url: str) -> bool:
    try:
        connection = await asyncio.wait_for(asyncpg.connect(_asyncpg_dsn(url)), timeout=3)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    await connection.close()
    return True


def _asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def server_url() -> tuple[str, str]:
    """(URL of a maintenance database on a running server, where it came from)."""
    for variable in ("TEST_DATABASE_URL", "DATABASE_URL"):
        url = os.environ.get(variable)
        if url and await _reachable(url):
            return url, variable
    from app.db.embedded import start_embedded_postgres

    data_dir = Path(tempfile.gettempdir()) / "tollgate-test-pg"
    url = await asyncio.to_thread(start_embedded_postgres, data_dir)
    return url, "embedded"


async def create_database(server: str) -> str:
    name = f"tollgate_test_{uuid.uuid4().hex[:12]}"
    connection = await asyncpg.connect(_asyncpg_dsn(server))
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return make_url(server).set(database=name).render_as_string(hide_password=False)


async def drop_database(server: str, url: str) -> None:
    name = make_url(url).database
    connection = await asyncpg.connect(_asyncpg_dsn(server))
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()
