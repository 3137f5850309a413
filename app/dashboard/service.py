"""What each dashboard page shows. Usage figures come from the usage query's own service, given
the same request body a client would send to `POST /v1/usage/completions`, so the chart, the
table and the CSV always agree with the API. Never commits.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import msgspec
from sqlalchemy.ext.asyncio import AsyncSession

from app.accounts import repository as key_repository
from app.accounts import service as accounts
from app.credits.tiers import Tier, TierTable
from app.dashboard import repository
from app.dashboard.chart import Chart, daily_chart
from app.db.models import Account, ApiKey
from app.errors import InvalidRequest, NotFound
from app.payments import recharge
from app.payments.config import BillingConfig
from app.pricing import Catalog
from app.usage.schemas import GROUP_FIELDS, parse_usage_query
from app.usage.service import usage_report

CHART_DAYS = 30
TOPUP_PRESETS = tuple(Decimal(v) for v in ("10", "20", "50", "100", "250"))
KEY_NAME_MAX = 100
_MONTH_RE = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")


# ── usage, through the usage API's service ──────────────────────────────────────────────────


def _midnight(day: date) -> str:
    return datetime.combine(day, time(), tzinfo=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def usage_rows(
    db: AsyncSession,
    catalog: Catalog,
    account_id: uuid.UUID,
    *,
    start: date,
    end: date,
    group_by: tuple[str, ...],
    now: datetime,
) -> list[dict[str, Any]]:
    """The rows `POST /v1/usage/completions` answers for DAY windows (UTC) from `start` to `end`
    (exclusive)."""
    body = {
        "start_time": _midnight(start),
        "end_time": _midnight(end),
        "window_size": "DAY",
        "group_by": list(group_by),
    }
    query = parse_usage_query(msgspec.json.encode(body), fields=GROUP_FIELDS, now=now)
    report = await usage_report(db, query, catalog=catalog, account_id=account_id)
    rows: list[dict[str, Any]] = report["data"]
    return rows


def _row_day(row: dict[str, Any]) -> date:
    return date.fromisoformat(row["windowStart"][:10])


# ── overview ────────────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True, slots=True)
class TierProgress:
    current: Tier
    next: Tier | None
    basis: str  # "purchased" or "spend": what moves an account up
    total: Decimal  # purchased (or spent) so far
    remaining: Decimal  # to the next tier; zero on the highest


@dataclass(frozen=True, slots=True)
class Overview:
    account: Account
    available: Decimal
    tier: TierProgress
    month_start: date
    month_to_date: Decimal
    chart: Chart


def tier_progress(account: Account, tiers: TierTable) -> TierProgress:
    current = tiers.tier_for(account.total_purchased, account.total_usage)
    upcoming = tiers.next_tier(current)
    total = tiers.ranked_total(account.total_purchased, account.total_usage)
    remaining = max(upcoming.min_total - total, Decimal(0)) if upcoming else Decimal(0)
    return TierProgress(current, upcoming, tiers.basis, total, remaining)


async def overview(
    db: AsyncSession,
    *,
    account_id: uuid.UUID,
    tiers: TierTable,
    catalog: Catalog,
    now: datetime,
) -> Overview:
    account = await accounts.get_account(db, account_id)
    today = now.astimezone(UTC).date()
    first_day = today - timedelta(days=CHART_DAYS - 1)
    month_start = today.replace(day=1)
    # One query covers the chart and the month so far (which starts up to 30 days back).
    rows = await usage_rows(
        db,
        catalog,
        account_id,
        start=min(first_day, month_start),
        end=today + timedelta(days=1),
        group_by=(),
        now=now,
    )
    per_day: dict[date, Decimal] = {}
    for row in rows:
        if row["currency"] == account.currency:
            per_day[_row_day(row)] = per_day.get(_row_day(row), Decimal(0)) + Decimal(row["cost"])
    days = [first_day + timedelta(days=i) for i in range(CHART_DAYS)]
    return Overview(
        account=account,
        available=account.balance - account.held,
        tier=tier_progress(account, tiers),
        month_start=month_start,
        month_to_date=sum(
            (cost for day, cost in per_day.items() if day >= month_start), Decimal(0)
        ),
        chart=daily_chart(
            [(day, per_day.get(day, Decimal(0))) for day in days], account.currency, today
        ),
    )


# ── usage by day and model ──────────────────────────────────────────────────────────────────


@dataclass(frozen=True, slots=True)
class UsageLine:
    day: date | None  # None on totals
    model: str | None  # None on a day's or the month's total
    requests: int
    input_tokens: int
    output_tokens: int
    images: int
    search_requests: int
    cost: Decimal

    def plus(self, other: UsageLine) -> UsageLine:
        return UsageLine(
            day=self.day if self.day == other.day else None,
            model=self.model if self.model == other.model else None,
            requests=self.requests + other.requests,
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            images=self.images + other.images,
            search_requests=self.search_requests + other.search_requests,
            cost=self.cost + other.cost,
        )


ZERO = UsageLine(None, None, 0, 0, 0, 0, 0, Decimal(0))


@dataclass(frozen=True, slots=True)
class MonthUsage:
    month: date
    rows: list[dict[str, Any]]  # as the usage API answers them, for the CSV
    lines: list[UsageLine]  # by day, then model
    by_model: list[UsageLine]
    total: UsageLine


def parse_month(value: str | None, today: date) -> date:
    """`YYYY-MM` → its first day; this month when not given. ValueError when malformed."""
    if not value:
        return today.replace(day=1)
    match = _MONTH_RE.match(value.strip())
    if match is None or not 1970 <= int(match.group(1)) <= 9000:
        raise ValueError(f"Months look like 2026-05, not {value[:20]!r}.")
    return date(int(match.group(1)), int(match.group(2)), 1)


def next_month(month: date) -> date:
    return date(month.year + month.month // 12, month.month % 12 + 1, 1)


def previous_month(month: date) -> date:
    return (month - timedelta(days=1)).replace(day=1)


async def month_usage(
    db: AsyncSession, catalog: Catalog, account_id: uuid.UUID, month: date, now: datetime
) -> MonthUsage:
    rows = await usage_rows(
        db,
        catalog,
        account_id,
        start=month,
        end=next_month(month),
        group_by=("model",),
        now=now,
    )
    lines = [
        UsageLine(
            day=_row_day(row),
            model=row["groupBy"]["model"],
            requests=row["requests"],
            input_tokens=row["input_token"],
            output_tokens=row["output_token"],
            images=row["images"],
            search_requests=row["search_requests"],
            cost=Decimal(row["cost"]),
        )
        for row in rows
    ]
    models: dict[str | None, UsageLine] = {}
    total = ZERO
    for line in lines:
        before = models.get(line.model)
        models[line.model] = line if before is None else before.plus(line)
        total = total.plus(line)
    by_model = sorted(
        (replace(m, day=None) for m in models.values()), key=lambda m: (-m.cost, m.model or "")
    )
    return MonthUsage(month, rows, lines, by_model, replace(total, day=None, model=None))


CSV_COLUMNS = (
    "date",
    "model",
    "requests",
    "input_tokens",
    "output_tokens",
    "images",
    "search_requests",
    "cost",
    "currency",
    "window_start",
    "window_end",
)


def csv_records(rows: list[dict[str, Any]]) -> list[list[str]]:
    """One record per usage row, numbers exactly as the usage API writes them."""
    return [
        [
            row["windowStart"][:10],
            row["groupBy"].get("model") or "",
            str(row["requests"]),
            str(row["input_token"]),
            str(row["output_token"]),
            str(row["images"]),
            str(row["search_requests"]),
            row["cost"],
            row["currency"],
            row["windowStart"],
            row["windowEnd"],
        ]
        for row in rows
    ]


# ── top-up ──────────────────────────────────────────────────────────────────────────────────


def topup_presets(config: BillingConfig) -> list[Decimal]:
    presets = [p for p in TOPUP_PRESETS if config.topup_min <= p <= config.topup_max]
    return presets or [config.topup_min]


def clean_amount(value: str) -> str:
    """What people type: `€20`, ` 20.00 ` → `20`, `20.00`. Anything else goes to the payments
    service as typed, which says what is wrong with it."""
    text = value.strip()
    for sign in ("€", "$", "£"):
        text = text.removeprefix(sign).strip()
    return text


# ── API keys ────────────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True, slots=True)
class KeyRow:
    key: ApiKey
    last_used: datetime | None
    current: bool  # the key this session signed in with


async def key_rows(
    db: AsyncSession, account_id: uuid.UUID, current_key_id: uuid.UUID
) -> list[KeyRow]:
    """Active keys first (newest first), then revoked ones."""
    keys = await key_repository.list_keys(db, account_id)
    used = await repository.keys_last_used(db, account_id, [k.id for k in keys])
    keys.sort(key=lambda k: (k.revoked_at is not None, -k.created_at.timestamp()))
    return [KeyRow(k, used.get(k.id), k.id == current_key_id) for k in keys]


async def create_key(db: AsyncSession, account_id: uuid.UUID, name: str) -> tuple[ApiKey, str]:
    name = " ".join(name.split())
    if "\x00" in name:
        raise InvalidRequest("A key's name cannot contain the NUL character.")
    if len(name) > KEY_NAME_MAX:
        raise InvalidRequest(f"A key's name can be at most {KEY_NAME_MAX} characters.")
    return await accounts.issue_key(db, account_id, name=name or None)


async def revoke_key(db: AsyncSession, account_id: uuid.UUID, key_id: str) -> ApiKey:
    """Only a key of this account: another account's key id is "not found" like a made-up one."""
    try:
        wanted = uuid.UUID(key_id)
    except ValueError:
        raise NotFound("That key doesn't exist (or belongs to another account).") from None
    try:
        return await accounts.revoke_key(db, wanted, account_id=account_id)
    except NotFound:
        raise NotFound("That key doesn't exist (or belongs to another account).") from None


# ── auto-recharge ───────────────────────────────────────────────────────────────────────────


async def save_auto_recharge(
    db: AsyncSession,
    config: BillingConfig,
    account: Account,
    *,
    enabled: bool,
    threshold: str,
    amount: str,
) -> None:
    """The form's fields to the rules of `POST /v1/billing/auto_recharge` (one service for
    both): a blank field keeps its saved value."""
    await recharge.save_auto_recharge(
        db,
        account,
        config,
        enabled=enabled,
        threshold=clean_amount(threshold) if threshold.strip() else None,
        amount=clean_amount(amount) if amount.strip() else None,
    )
