"""Fixed one-minute windows per account, counted in process by default (`Windows`), in Redis
(`limits`' storage) when REDIS_URL is set so every instance shares one count.

Keys do not depend on the tier, so a tier upgrade keeps the minute's count and raises the
ceiling from the very next request. Tokens are reserved from the request's estimate before
forwarding and corrected to the actual usage after; a refused request consumes nothing.

Redis is a convenience, never a dependency of serving: every Redis operation runs under a
short deadline, and when one fails (refused, reset, timed out) the limiter counts in this
process's own memory instead (the same windows as without REDIS_URL), says so once in the
log and in `tollgate_rate_limit_fallback`, and pings Redis in the background at most once
per `retry_seconds` while requests arrive; the first answer makes the limits shared again.
`limits`' async Redis storage has no fallback of its own (only `wrap_exceptions`), hence this.

While on its own counters each instance allows a tier's full limit by itself: N instances
allow up to N times the limit until Redis is back. Counts do not move between the two
stores; a correction of a request admitted before a switch lands on the other store's count
(at most the reservations in flight at that moment, and never shown below zero).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar
from urllib.parse import urlsplit

from coredis.retry import NoRetryPolicy
from limits.aio.storage import Storage
from limits.storage import storage_from_string
from prometheus_client import Counter, Gauge

from app.credits.tiers import Tier
from app.errors import RateLimitExceeded

logger = logging.getLogger(__name__)

WINDOW_SECONDS = 60
# The most a request waits on Redis (connect, or one operation's round trips) before the
# limiter counts in process instead; a healthy Redis answers in well under a millisecond.
REDIS_TIMEOUT_SECONDS = 0.25
# While on its own counters, how often (at most) the limiter asks whether Redis is back.
REDIS_RETRY_SECONDS = 1.0

# Per process: how many of its limiters count on their own because Redis failed (one
# limiter per gateway, so 0 or 1 outside tests that run several gateways in one process).
FALLBACK = Gauge(
    "tollgate_rate_limit_fallback",
    "1 while rate limits are counted in this process because Redis is unreachable",
)
FALLBACKS = Counter(
    "tollgate_rate_limit_fallbacks",
    "Times the rate limits fell back from Redis to this process's own counters",
)

T = TypeVar("T")


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


def _where(url: str) -> str:
    """The URL without its credentials, for the log."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}"


class Counts(Protocol):
    """What the limiter asks of a store: `limits`' storages (Redis) and `Windows`."""

    async def incr(self, key: str, expiry: int, amount: int = 1) -> int: ...

    async def get(self, key: str) -> int: ...

    async def get_expiry(self, key: str) -> float: ...


class Windows:
    """This process's own counts, with the semantics of `limits`' storages (a window starts,
    with its expiry, when an increment takes the count from zero), without their per-key
    locks and expiry task: nothing here awaits, so no two calls interleave. At concurrency 32
    `limits`' MemoryStorage was 5 % of the gateway's CPU."""

    SWEEP_SECONDS = 60.0

    def __init__(self) -> None:
        self._counts: dict[str, tuple[int, float]] = {}  # key → (count, expires at)
        self._next_sweep = time.time() + self.SWEEP_SECONDS

    async def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        now = time.time()
        if now >= self._next_sweep:
            self._sweep(now)
        entry = self._counts.get(key)
        count = amount if entry is None or entry[1] <= now else entry[0] + amount
        expires = now + expiry if count == amount or entry is None else entry[1]
        self._counts[key] = (count, expires)
        return count

    async def get(self, key: str) -> int:
        entry = self._counts.get(key)
        return entry[0] if entry is not None and entry[1] > time.time() else 0

    async def get_expiry(self, key: str) -> float:
        now = time.time()
        entry = self._counts.get(key)
        return entry[1] if entry is not None and entry[1] > now else now

    def _sweep(self, now: float) -> None:
        self._next_sweep = now + self.SWEEP_SECONDS
        self._counts = {key: entry for key, entry in self._counts.items() if entry[1] > now}


@dataclass(frozen=True, slots=True)
class _Count:
    state: LimitState
    over_requests: bool | None  # None: admitted


class RateLimiter:
    def __init__(
        self,
        redis_url: str | None,
        *,
        timeout: float = REDIS_TIMEOUT_SECONDS,
        retry_seconds: float = REDIS_RETRY_SECONDS,
    ) -> None:
        self._memory = Windows()
        self._shared: Storage | None = None
        self._where = ""
        if redis_url:
            # No client-side retries: a failed call falls back at once rather than after
            # three attempts; the deadlines bound a Redis that accepts and never answers.
            shared = storage_from_string(
                f"async+{redis_url}",  # redis://, rediss://, redis+sentinel://, redis+cluster://
                stream_timeout=timeout,
                connect_timeout=timeout,
                retry_policy=NoRetryPolicy(),  # type: ignore[arg-type]
            )
            assert isinstance(shared, Storage)
            self._shared = shared
            self._where = _where(redis_url)
        self._timeout = timeout
        self._retry_seconds = retry_seconds
        self._sharing = self._shared is not None
        self._next_probe = 0.0
        self._probe: asyncio.Task[None] | None = None
        # When Redis's windows end, as learnt from its answers (key → wall-clock time): the
        # reset headers need them, and asking on every request was a second round trip.
        self._expiries: dict[str, float] = {}

    @property
    def shared(self) -> bool:
        """Whether the counts are Redis's (False without REDIS_URL or while it is away)."""
        return self._sharing

    def close(self) -> None:
        """Forget this limiter: its probe stops and the gauge no longer counts it."""
        if self._probe is not None:
            self._probe.cancel()
        if self._shared is not None and not self._sharing:
            FALLBACK.dec()
        self._shared = None
        self._sharing = False

    @staticmethod
    def _keys(account_id: uuid.UUID) -> tuple[str, str]:
        return f"tollgate:rpm:{account_id}", f"tollgate:tpm:{account_id}"

    async def admit(self, account_id: uuid.UUID, tier: Tier, tokens: int) -> LimitState:
        """Count one request and reserve `tokens`, or raise 429 having counted nothing."""
        count = await self._run(lambda storage: self._count(storage, account_id, tier, tokens))
        if count.over_requests is None:
            return count.state
        state = count.state
        retry_after = state.requests_reset if count.over_requests else state.tokens_reset
        what = (
            f"requests per minute (RPM): limit {tier.rpm}"
            if count.over_requests
            else f"tokens per minute (TPM): limit {tier.tpm}, requested {tokens}"
        )
        raise RateLimitExceeded(
            f"Rate limit reached for your '{tier.name}' tier on {what}. "
            f"Please try again in {_duration(retry_after)}, or add credit to raise your tier.",
            headers={**state.headers(), "retry-after": str(max(1, math.ceil(retry_after)))},
        )

    async def correct(self, account_id: uuid.UUID, reserved: int, actual: int) -> None:
        if actual != reserved:
            tpm_key = self._keys(account_id)[1]
            await self._run(
                lambda storage: storage.incr(tpm_key, WINDOW_SECONDS, actual - reserved)
            )

    async def peek(self, account_id: uuid.UUID, tier: Tier) -> LimitState:
        return await self._run(lambda storage: self._peek(storage, account_id, tier))

    async def _run(self, operation: Callable[[Counts], Awaitable[T]]) -> T:
        """`operation` on Redis while it answers in time, else on this process's counters."""
        shared = self._shared
        if shared is not None:
            if self._sharing:
                try:
                    async with asyncio.timeout(self._timeout):
                        return await operation(shared)
                except Exception as exc:  # whatever Redis (or its client) does: count here
                    self._fall_back(exc)
            else:
                self._maybe_probe(shared)
        return await operation(self._memory)

    def _fall_back(self, exc: Exception) -> None:
        if not self._sharing:
            return  # another request saw it first
        self._sharing = False
        self._next_probe = time.monotonic() + self._retry_seconds
        FALLBACK.inc()
        FALLBACKS.inc()
        logger.warning(
            "Redis at %s failed (%s); rate limits are counted in this process until it "
            "answers again (each instance allows the full limits meanwhile)",
            self._where,
            repr(exc) if str(exc) else type(exc).__name__,
        )

    def _maybe_probe(self, shared: Storage) -> None:
        now = time.monotonic()
        if now < self._next_probe or (self._probe is not None and not self._probe.done()):
            return
        self._next_probe = now + self._retry_seconds
        self._probe = asyncio.get_running_loop().create_task(self._try_shared(shared))

    async def _try_shared(self, shared: Storage) -> None:
        try:
            # A write like the limiter's own: a replica that is read-only, or a server out of
            # memory, answers PING and still cannot count.
            async with asyncio.timeout(self._timeout):
                await shared.incr("tollgate:probe", WINDOW_SECONDS, 1)
        except Exception:
            return
        if not self._sharing and self._shared is shared:
            self._sharing = True
            self._expiries.clear()  # a restarted Redis may have lost the windows
            FALLBACK.dec()
            logger.info("Redis at %s answers again; rate limits are shared again", self._where)

    async def _both(self, storage: Counts, first: Awaitable[T], second: Awaitable[T]) -> list[T]:
        """Two calls: concurrently on Redis (one round trip's wait), one after the other in
        memory, where nothing waits and a gather's two tasks would only cost CPU."""
        if storage is self._memory:
            return [await first, await second]
        return list(await asyncio.gather(first, second))

    async def _count(
        self, storage: Counts, account_id: uuid.UUID, tier: Tier, tokens: int
    ) -> _Count:
        rpm_key, tpm_key = self._keys(account_id)
        requests, used_tokens = await self._both(
            storage,
            storage.incr(rpm_key, WINDOW_SECONDS, 1),
            storage.incr(tpm_key, WINDOW_SECONDS, tokens),
        )
        if requests <= tier.rpm and used_tokens <= tier.tpm:
            if storage is not self._memory:
                # A window that an increment started ends a minute from now.
                now = time.time()
                if requests == 1:
                    self._expiries[rpm_key] = now + WINDOW_SECONDS
                if used_tokens == tokens:
                    self._expiries[tpm_key] = now + WINDOW_SECONDS
            return _Count(await self._state(storage, account_id, tier, requests, used_tokens), None)
        await self._both(
            storage,
            storage.incr(rpm_key, WINDOW_SECONDS, -1),
            storage.incr(tpm_key, WINDOW_SECONDS, -tokens),
        )
        state = await self._state(storage, account_id, tier, requests - 1, used_tokens - tokens)
        return _Count(state, requests > tier.rpm)

    async def _expiry(self, storage: Counts, rpm_key: str, tpm_key: str, now: float) -> list[float]:
        """When the two windows end: Redis's as last learnt while that is still ahead (another
        instance restarting a window early shows at worst the earlier reset), else asked."""
        shared = storage is not self._memory
        known = self._expiries
        if shared:
            rpm_expiry, tpm_expiry = known.get(rpm_key, 0.0), known.get(tpm_key, 0.0)
            if rpm_expiry > now and tpm_expiry > now:
                return [rpm_expiry, tpm_expiry]
        asked = await self._both(storage, storage.get_expiry(rpm_key), storage.get_expiry(tpm_key))
        if shared:
            if len(known) > 100_000:
                known.clear()
            known[rpm_key], known[tpm_key] = asked
        return asked

    async def _peek(self, storage: Counts, account_id: uuid.UUID, tier: Tier) -> LimitState:
        rpm_key, tpm_key = self._keys(account_id)
        requests, tokens = await self._both(storage, storage.get(rpm_key), storage.get(tpm_key))
        return await self._state(storage, account_id, tier, requests, tokens)

    async def _state(
        self, storage: Counts, account_id: uuid.UUID, tier: Tier, requests: int, tokens: int
    ) -> LimitState:
        rpm_key, tpm_key = self._keys(account_id)
        now = time.time()
        rpm_expiry, tpm_expiry = await self._expiry(storage, rpm_key, tpm_key, now)
        requests, tokens = max(0, requests), max(0, tokens)
        return LimitState(
            rpm=tier.rpm,
            tpm=tier.tpm,
            requests=requests,
            tokens=tokens,
            requests_reset=_clamp(rpm_expiry - now) if requests else float(WINDOW_SECONDS),
            tokens_reset=_clamp(tpm_expiry - now) if tokens else float(WINDOW_SECONDS),
        )
