"""The async engine and the per-request transaction.

The request or job that owns a transaction commits it; services and repositories never do.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

from litestar.datastructures import State
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)


def async_url(database_url: str) -> URL:
    """`postgresql://…` (TCP or unix socket) → the asyncpg dialect, parsed, never by hand."""
    url = make_url(database_url)
    return url.set(drivername="postgresql+asyncpg")


def create_engine(database_url: str, *, pool_size: int = 10) -> AsyncEngine:
    return create_async_engine(
        async_url(database_url),
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=False,
        # asyncpg's statement cache is per connection and safe here (no pgbouncer in between).
        connect_args={"server_settings": {"application_name": "tollgate"}},
    )


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


async def provide_transaction(state: State) -> AsyncGenerator[AsyncSession, None]:
    """One transaction per request: committed after the handler returns, before the response
    is sent, so a client never sees a success that was not durable; rolled back on error."""
    sessionmaker: async_sessionmaker[AsyncSession] = state.sessionmaker
    async with sessionmaker() as session:
        try:
            yield session
        except BaseException:
            await session.rollback()
            raise
        else:
            await session.commit()
