"""Customer authentication: `Authorization: Bearer tg-…` → the key's account.

Lookups by key hash are cached in process for at most `key_cache_seconds` (≤ 1 s), so a
revoked key stops working everywhere within a second while the hot path rarely touches the
database. Only identity is cached; balance, holds and tier are always read fresh.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass

from litestar.connection import ASGIConnection
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.accounts import repository
from app.accounts.keys import KEY_PREFIX, hash_key
from app.errors import InvalidApiKey


@dataclass(frozen=True, slots=True)
class Principal:
    account_id: uuid.UUID
    api_key_id: uuid.UUID


class KeyAuthenticator:
    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], ttl: float) -> None:
        self._sessionmaker = sessionmaker
        self._ttl = ttl
        # key hash → (expires at, principal or None for "no such key"): misses are cached too,
        # so a flood of bad keys cannot turn into a flood of queries.
        self._cache: dict[bytes, tuple[float, Principal | None]] = {}
        # Lookups in flight: when an entry expires under load, the concurrent requests of that
        # key share one query instead of each taking a database connection.
        self._lookups: dict[bytes, asyncio.Future[Principal | None]] = {}

    async def authenticate(self, authorization: str | None) -> Principal:
        token = _bearer_token(authorization)
        key_hash = hash_key(token)
        now = time.monotonic()
        cached = self._cache.get(key_hash)
        if cached is not None and cached[0] > now:
            principal = cached[1]
        else:
            lookup = self._lookups.get(key_hash)
            if lookup is None:
                lookup = asyncio.ensure_future(self._look_up(key_hash, now))
                self._lookups[key_hash] = lookup
                lookup.add_done_callback(lambda _: self._lookups.pop(key_hash, None))
            principal = await asyncio.shield(lookup)
        if principal is None:
            raise InvalidApiKey(
                "Incorrect API key provided. You can find your API key in your dashboard."
            )
        return principal

    async def _look_up(self, key_hash: bytes, now: float) -> Principal | None:
        async with self._sessionmaker() as session:
            found = await repository.find_active_key(session, key_hash)
        principal = Principal(api_key_id=found[0], account_id=found[1]) if found else None
        if len(self._cache) > 100_000:
            self._cache.clear()
        self._cache[key_hash] = (now + self._ttl, principal)
        return principal


def _bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise InvalidApiKey(
            "You didn't provide an API key. Provide it in the Authorization header "
            "(Authorization: Bearer YOUR_KEY)."
        )
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token.startswith(KEY_PREFIX):
        raise InvalidApiKey("Incorrect API key provided. Keys look like `tg-…`.")
    return token


async def provide_principal(request: ASGIConnection) -> Principal:  # type: ignore[type-arg]
    authenticator: KeyAuthenticator = request.app.state.authenticator
    return await authenticator.authenticate(request.headers.get("authorization"))
