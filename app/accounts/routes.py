"""`GET /v1/key` (SPEC 3.6, OpenRouter's `/key`): the calling key, its limits and its spend."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from litestar import get
from litestar.di import NamedDependency
from sqlalchemy.ext.asyncio import AsyncSession

from app.accounts import service
from app.accounts.auth import Principal
from app.credits.limits import LimitPeriod, calendar_period
from app.money import money_str
from app.usage.service import cost_since

_PERIODS = (LimitPeriod.DAY, LimitPeriod.WEEK, LimitPeriod.MONTH, LimitPeriod.TOTAL)


@get("/v1/key")
async def get_key(
    principal: NamedDependency[Principal], db: NamedDependency[AsyncSession]
) -> dict[str, Any]:
    key = await service.get_key(db, principal.api_key_id)
    account = await service.get_account(db, principal.account_id)
    view = service.key_view(key, account)
    limit = service.key_limit(account, key)
    now = datetime.now(UTC)
    zone = ZoneInfo("UTC") if limit is None else limit.zone
    periods = {period: calendar_period(period, zone, now) for period in _PERIODS}
    spent = await cost_since(
        db,
        account.id,
        [start for start, _ in periods.values()],
        now + timedelta(microseconds=1),  # every event so far: none is later than now
        api_key_id=key.id,
    )
    usage = {period.value: spent[periods[period][0]] for period in _PERIODS}
    remaining: Decimal | None = None
    resets: datetime | None = None
    if limit is not None:
        remaining = max(Decimal(0), limit.amount - usage[limit.period.value])
        resets = periods[limit.period][1]
    del view["object"], view["account_id"], view["revoked"]
    return {
        "data": {
            **view,
            "limit_remaining": None if remaining is None else money_str(remaining),
            "limit_resets_at": None if resets is None else resets.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "usage": {name: money_str(amount) for name, amount in usage.items()},
            "currency": account.currency,
        }
    }
