"""Customer authentication: `Authorization: Bearer tg-…` → the key's account.

Lookups by key hash are cached in process for at most `key_cache_seconds` (≤ 1 s), so a
revoked key stops working everywhere within a second while the hot path rarely touches the
database; on the instance that revoked it, at once (`forget`). Only identity is cached;
balance, holds and tier are always read fresh.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from datetime import datetime

from litestar.connection import ASGIConnection
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.accounts import repository
from app.accounts.keys import KEY_PREFIX, KeyScope, hash_key
from app.errors import InvalidApiKey


@dataclass(frozen=True, slots=True)
class Principal:
    account_id: uuid.UUID
    api_key_id: uuid.UUID
    scope: KeyScope = KeyScope.FULL
    allowed_models: frozenset[str] | None = None  # catalog names; None: every model
    expires_at: datetime | None = None
    prefix: str = ""  # the key's displayed start, for logs

    def allows(self, name: str, base: str, suffixed: bool) -> bool:
        """A model by its canonical name as requested; a base name allows its suffixes."""
        allowed = self.allowed_models
        return allowed is None or name in allowed or (suffixed and base in allowed)


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
        # Counts `forget` calls: a lookup that started before one may have read a key just
        # revoked, so its answer is not cached.
        self._forgotten = 0

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
                lookup.add_done_callback(lambda done: self._lookup_done(key_hash, done))
            principal = await asyncio.shield(lookup)
        if principal is None:
            raise InvalidApiKey(
                "Incorrect API key provided. You can find your API key in your dashboard."
            )
        # Checked on every request, cached or not: an expiry takes effect at its instant.
        if principal.expires_at is not None and principal.expires_at.timestamp() <= time.time():
            raise InvalidApiKey(
                f"This API key expired at {principal.expires_at:%Y-%m-%dT%H:%M:%SZ}. "
                "Create a new key in your dashboard."
            )
        return principal

    def forget(self, key_hash: bytes) -> None:
        """Drop a key from the cache once its revocation has committed: the next request with
        it on this instance reads the database. (Other instances within `ttl`.)"""
        self._forgotten += 1
        self._cache.pop(key_hash, None)
        self._lookups.pop(key_hash, None)  # later requests must not join a lookup begun before

    def _lookup_done(self, key_hash: bytes, lookup: asyncio.Future[Principal | None]) -> None:
        if self._lookups.get(key_hash) is lookup:
            del self._lookups[key_hash]

    async def _look_up(self, key_hash: bytes, now: float) -> Principal | None:
        forgotten = self._forgotten
        async with self._sessionmaker() as session:
            found = await repository.find_active_key(session, key_hash)
        principal = None
        if found is not None:
            principal = Principal(
                account_id=found.account_id,
                api_key_id=found.id,
                scope=KeyScope(found.scope),
                allowed_models=None
                if found.allowed_models is None
                else frozenset(found.allowed_models),
                expires_at=found.expires_at,
                prefix=found.prefix,
            )
        if forgotten != self._forgotten:
            return principal  # read before a revocation committed, perhaps: not cached
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
