"""Fixed one-minute windows per account, counted in `limits`' storage: in process by default,
in Redis (atomic Lua increments) when REDIS_URL is set so every instance shares one count.

Keys do not depend on the tier, so a tier upgrade keeps the minute's count and raises the
ceiling from the very next request. Tokens are reserved from the request's estimate before
forwarding and corrected to the actual usage after; a refused request consumes nothing.
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass

from limits.aio.storage import MemoryStorage, Storage
from limits.storage import storage_from_string

from app.credits.tiers import Tier
from app.errors import RateLimitExceeded

WINDOW_SECONDS = 60


@dataclass(frozen=True, slots=True)
class LimitState:
    rpm: int
    tpm: int
    requests: int  # used in the current window
    tokens: int
    requests_reset: float  # seconds until the window restarts
    tokens_reset: float

    def headers(self) -> dict[str, str]:
        return {
            "x-ratelimit-limit-requests": str(self.rpm),
            "x-ratelimit-remaining-requests": str(max(0, self.rpm - self.requests)),
            "x-ratelimit-reset-requests": _duration(self.requests_reset),
            "x-ratelimit-limit-tokens": str(self.tpm),
            "x-ratelimit-remaining-tokens": str(max(0, self.tpm - self.tokens)),
            "x-ratelimit-reset-tokens": _duration(self.tokens_reset),
        }


def _duration(seconds: float) -> str:
    """OpenAI's style: `20ms`, `6s`, `1m0s`."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    whole = math.ceil(seconds)
    return f"{whole // 60}m{whole % 60}s" if whole >= 60 else f"{whole}s"


def _clamp(seconds: float) -> float:
    return min(float(WINDOW_SECONDS), max(0.0, seconds))


class RateLimiter:
    def __init__(self, redis_url: str | None) -> None:
        storage = storage_from_string(f"async+{redis_url}") if redis_url else MemoryStorage()
        assert isinstance(storage, Storage)
        self._storage = storage

    @staticmethod
    def _keys(account_id: uuid.UUID) -> tuple[str, str]:
        return f"tollgate:rpm:{account_id}", f"tollgate:tpm:{account_id}"

    async def admit(self, account_id: uuid.UUID, tier: Tier, tokens: int) -> LimitState:
        """Count one request and reserve `tokens`, or raise 429 having counted nothing."""
        rpm_key, tpm_key = self._keys(account_id)
        requests = await self._storage.incr(rpm_key, WINDOW_SECONDS, 1)
        used_tokens = await self._storage.incr(tpm_key, WINDOW_SECONDS, tokens)
        if requests <= tier.rpm and used_tokens <= tier.tpm:
            return await self._state(account_id, tier, requests, used_tokens)
        await self._storage.incr(rpm_key, WINDOW_SECONDS, -1)
        await self._storage.incr(tpm_key, WINDOW_SECONDS, -tokens)
        state = await self._state(account_id, tier, requests - 1, used_tokens - tokens)
        over_requests = requests > tier.rpm
        retry_after = state.requests_reset if over_requests else state.tokens_reset
        what = (
            f"requests per minute (RPM): limit {tier.rpm}"
            if over_requests
            else f"tokens per minute (TPM): limit {tier.tpm}, requested {tokens}"
        )
        raise RateLimitExceeded(
            f"Rate limit reached for your '{tier.name}' tier on {what}. "
            f"Please try again in {_duration(retry_after)}, or add credit to raise your tier.",
            headers={**state.headers(), "retry-after": str(max(1, math.ceil(retry_after)))},
        )

    async def correct(self, account_id: uuid.UUID, reserved: int, actual: int) -> None:
        if actual != reserved:
            await self._storage.incr(self._keys(account_id)[1], WINDOW_SECONDS, actual - reserved)

    async def peek(self, account_id: uuid.UUID, tier: Tier) -> LimitState:
        rpm_key, tpm_key = self._keys(account_id)
        return await self._state(
            account_id, tier, await self._storage.get(rpm_key), await self._storage.get(tpm_key)
        )

    async def _state(
        self, account_id: uuid.UUID, tier: Tier, requests: int, tokens: int
    ) -> LimitState:
        rpm_key, tpm_key = self._keys(account_id)
        now = time.time()
        rpm_reset = await self._storage.get_expiry(rpm_key) - now
        tpm_reset = await self._storage.get_expiry(tpm_key) - now
        return LimitState(
            rpm=tier.rpm,
            tpm=tier.tpm,
            requests=requests,
            tokens=tokens,
            requests_reset=_clamp(rpm_reset) if requests else float(WINDOW_SECONDS),
            tokens_reset=_clamp(tpm_reset) if tokens else float(WINDOW_SECONDS),
        )
