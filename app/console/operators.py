"""Operators: creation with a one-time set-password link, argon2id passwords, sign-in with a
rate limit per address and per client. Never commits."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from limits import RateLimitItemPerMinute
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.console.schemas import OperatorRole
from app.db.models import Operator, OperatorToken
from app.errors import Conflict, InvalidRequest

LINK_VALID = timedelta(hours=24)
MIN_PASSWORD = 12
# argon2-cffi's defaults are RFC 9106's second recommended argon2id profile.
_hasher = PasswordHasher()
# A hash to verify against when the address is unknown, so both cases take as long.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))

# Sign-in attempts: five failures per address, twenty per client, in 15 minutes (per process;
# the slow hash makes a guess expensive anyway).
_attempts = MovingWindowRateLimiter(MemoryStorage())
PER_ADDRESS = RateLimitItemPerMinute(5, 15)
PER_CLIENT = RateLimitItemPerMinute(20, 15)


def _token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


async def create_operator(
    session: AsyncSession, email: str, role: OperatorRole, public_url: str
) -> tuple[Operator, str]:
    """The operator and the link that sets its password (valid 24 h)."""
    email = email.strip().lower()
    if "@" not in email or "\x00" in email or len(email) > 320:
        raise InvalidRequest("That is not an email address.", param="email")
    if await session.scalar(select(Operator.id).where(Operator.email == email)):
        raise Conflict(f"An operator {email} exists already.", param="email")
    operator = Operator(id=uuid.uuid4(), email=email, role=role.value)
    session.add(operator)
    await session.flush()
    return operator, await new_link(session, operator, public_url)


async def new_link(session: AsyncSession, operator: Operator, public_url: str) -> str:
    token = secrets.token_urlsafe(32)
    session.add(
        OperatorToken(
            token_hash=_token_hash(token),
            operator_id=operator.id,
            expires_at=datetime.now(UTC) + LINK_VALID,
        )
    )
    await session.flush()
    return f"{public_url.rstrip('/')}/console/set-password?token={token}"


async def operator_of_link(session: AsyncSession, token: str) -> Operator | None:
    """The operator a valid, unused link is for."""
    row = await session.get(OperatorToken, _token_hash(token))
    if row is None or row.used_at is not None or row.expires_at <= datetime.now(UTC):
        return None
    return await session.get(Operator, row.operator_id)


async def set_password(session: AsyncSession, token: str, password: str) -> Operator:
    if len(password) < MIN_PASSWORD:
        raise InvalidRequest(f"Use at least {MIN_PASSWORD} characters.", param="password")
    row = await session.get(OperatorToken, _token_hash(token), with_for_update=True)
    if row is None or row.used_at is not None or row.expires_at <= datetime.now(UTC):
        raise InvalidRequest("This link has expired or was used already. Ask for a new one.")
    operator = await session.get(Operator, row.operator_id)
    assert operator is not None
    row.used_at = datetime.now(UTC)
    operator.password_hash = _hasher.hash(password)
    await session.flush()
    return operator


@dataclass(frozen=True, slots=True)
class SignIn:
    operator: Operator | None
    retry_after: int | None = None  # set when this address or client tried too often


def check_rate(email: str, client: str) -> int | None:
    """Seconds to wait when too many sign-ins failed for this address or client, else None."""
    for item, key in ((PER_ADDRESS, email.lower()), (PER_CLIENT, client)):
        if not _attempts.test(item, "console-sign-in", key):
            reset, _ = _attempts.get_window_stats(item, "console-sign-in", key)
            return max(1, int(reset - datetime.now(UTC).timestamp()))
    return None


async def sign_in(session: AsyncSession, email: str, password: str, client: str) -> SignIn:
    email = email.strip().lower()
    if (wait := check_rate(email, client)) is not None:
        return SignIn(None, wait)
    operator = await session.scalar(select(Operator).where(Operator.email == email))
    stored = operator.password_hash if operator and operator.disabled_at is None else None
    try:
        _hasher.verify(stored or _DUMMY_HASH, password)
        ok = stored is not None
    except (VerificationError, InvalidHashError):
        ok = False
    if not ok:
        _attempts.hit(PER_ADDRESS, "console-sign-in", email)
        _attempts.hit(PER_CLIENT, "console-sign-in", client)
        return SignIn(None, check_rate(email, client))
    assert operator is not None and stored is not None
    if _hasher.check_needs_rehash(stored):
        operator.password_hash = _hasher.hash(password)
        await session.flush()
    return SignIn(operator)


async def list_operators(session: AsyncSession) -> list[Operator]:
    return list(await session.scalars(select(Operator).order_by(Operator.created_at)))
