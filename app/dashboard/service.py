"""What each dashboard page shows. Usage figures come from the usage query's own service, given
the same request body a client would send to `POST /v1/usage/completions`, so the chart, the
table and the CSV always agree with the API. Never commits.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal
from functools import cache
from typing import Any
from zoneinfo import available_timezones

import msgspec
from msgspec import UNSET
from sqlalchemy.ext.asyncio import AsyncSession

from app.accounts import repository as key_repository
from app.accounts import service as accounts
from app.accounts.auth import Principal
from app.accounts.keys import KeyScope
from app.accounts.schemas import KEY_NAME_MAX, KeyChanges, KeyFields, key_changes
from app.credits import service as credits
from app.credits.limits import LimitPeriod, SpendLimit, period_bounds
from app.credits.tiers import Tier, TierTable
from app.dashboard import format as fmt
from app.dashboard import repository
from app.dashboard.chart import Chart, daily_chart
from app.db.models import Account, ApiKey
from app.errors import InvalidRequest, NotFound, PermissionDenied
from app.money import money_str, parse_money
from app.notifications import service as notifications
from app.notifications.schemas import EMAIL_SUBJECTS, DeliveryStatus, EventType
from app.notifications.service import RecentEvent
from app.payments import recharge
from app.payments.config import BillingConfig
from app.pricing import Catalog
from app.usage.schemas import GROUP_FIELDS, parse_usage_query
from app.usage.service import usage_report

CHART_DAYS = 30
TOPUP_PRESETS = tuple(Decimal(v) for v in ("10", "20", "50", "100", "250"))
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


# ── API keys and their spend controls ───────────────────────────────────────────────────────

LIMIT_WORDS = {  # how a limit reads ("€10.00 a day") and its current period ("today")
    LimitPeriod.DAY: ("a day", "today"),
    LimitPeriod.WEEK: ("a week", "this week"),
    LimitPeriod.MONTH: ("a month", "this month"),
    LimitPeriod.TOTAL: ("in total", "in total"),
}
# The API's field names in its messages, as the form calls them.
_FIELD_LABELS = (
    ("spend_limit.amount", "The spend limit"),
    ("spend_limit.period", "The limit's period"),
    ("spend_limit.timezone", "The limit's time zone"),
    ("allowed_models:", "Models:"),
)


@dataclass(frozen=True, slots=True)
class KeyForm:
    """The fields of a key's create or change form, as typed or as the key has them."""

    name: str = ""
    scope: str = KeyScope.FULL.value
    limit_amount: str = ""  # blank: no limit
    limit_period: str = LimitPeriod.DAY.value
    limit_timezone: str = "UTC"
    models: tuple[str, ...] = ()  # none: every model
    expires_at: str = ""  # UTC, as a datetime-local input has it (`2027-01-31T18:00`); blank: never

    @classmethod
    def of_key(cls, key: ApiKey, limit: SpendLimit | None) -> KeyForm:
        return cls(
            name=key.name or "",
            scope=key.scope,
            limit_amount="" if limit is None else money_str(limit.amount),
            limit_period=LimitPeriod.DAY.value if limit is None else limit.period.value,
            limit_timezone="UTC" if limit is None else limit.timezone,
            models=tuple(key.allowed_models or ()),
            expires_at=fmt.input_time(key.expires_at),
        )


@dataclass(frozen=True, slots=True)
class KeyRow:
    key: ApiKey
    last_used: datetime | None
    current: bool  # the key this session signed in with
    limit: SpendLimit | None
    spent: Decimal  # in the limit's current period, as the credit hold counts it; else this month
    resets_at: datetime | None  # end of the limit's period; None without a limit or for `total`
    expired: bool
    form: KeyForm  # its change form, filled with what it has

    @property
    def used_percent(self) -> Decimal:
        """Of its limit, 0 to 100 (a limit of zero is all used)."""
        if self.limit is None:
            return Decimal(0)
        if self.limit.amount <= 0:
            return Decimal("100.0")
        share = min(self.spent / self.limit.amount, Decimal(1)) * 100
        return share.quantize(Decimal("0.1"), rounding=ROUND_HALF_UP)

    @property
    def over(self) -> bool:
        return self.limit is not None and self.spent >= self.limit.amount


async def acting_key(db: AsyncSession, account_id: uuid.UUID, key_id: uuid.UUID) -> Principal:
    """The signed-in key as the rights check sees it, read in the caller's transaction: a key
    can create or change keys with no more rights than its own (SPEC 3.6)."""
    key = await accounts.get_key(db, key_id, account_id=account_id)
    if key.revoked_at is not None:
        raise PermissionDenied("The key you signed in with was revoked.")
    return Principal(
        account_id=key.account_id,
        api_key_id=key.id,
        scope=KeyScope(key.scope),
        allowed_models=None if key.allowed_models is None else frozenset(key.allowed_models),
        expires_at=key.expires_at,
    )


def model_choices(catalog: Catalog, now: datetime, creator: Principal) -> list[str]:
    """The models a form offers: the catalog's base names (each also allows its `-online` and
    `-deep` variants) that the signed-in key may use, and any other name its own list has."""
    names = [r.name for r in catalog.resolutions_at(now) if r.suffix is None]
    offered = [name for name in names if creator.allows(name, name, False)]
    offered += sorted(set(creator.allowed_models or ()) - set(offered))
    return offered


def new_key_form(account: Account, creator: Principal) -> KeyForm:
    """The create form as it starts: with the signed-in key's own limit, models and expiry when
    it has them, since a new key may have no more (so the form as shown is accepted)."""
    own = SpendLimit.from_stored(account.key_spend_limits.get(str(creator.api_key_id)))
    return KeyForm(
        limit_amount="" if own is None else money_str(own.amount),
        limit_period=LimitPeriod.DAY.value if own is None else own.period.value,
        limit_timezone="UTC" if own is None else own.timezone,
        models=tuple(sorted(creator.allowed_models or ())),
        expires_at=fmt.input_time(creator.expires_at),
    )


@cache
def time_zones() -> tuple[str, ...]:
    """For the time zone field's suggestions; any IANA name is accepted."""
    return ("UTC", *sorted(z for z in available_timezones() if "/" in z and z != "UTC"))


async def key_rows(
    db: AsyncSession,
    catalog: Catalog,
    account: Account,
    current_key_id: uuid.UUID,
    now: datetime,
) -> list[KeyRow]:
    """Active keys first (newest first), then revoked ones; each with its spend this period."""
    keys = await key_repository.list_keys(db, account.id)
    used = await repository.keys_last_used(db, account.id, [k.id for k in keys])
    keys.sort(key=lambda k: (k.revoked_at is not None, -k.created_at.timestamp()))
    limited = await credits.key_period_spend(db, account, now)
    month = await _month_spend_by_key(db, catalog, account, now) if keys else {}
    rows = []
    for k in keys:
        limit = accounts.key_limit(account, k)
        _, end = period_bounds(limit, now)
        rows.append(
            KeyRow(
                key=k,
                last_used=used.get(k.id),
                current=k.id == current_key_id,
                limit=limit,
                spent=limited.get(str(k.id), Decimal(0))
                if limit is not None
                else month.get(str(k.id), Decimal(0)),
                resets_at=None if limit is None else end,
                expired=k.expires_at is not None and k.expires_at <= now,
                form=KeyForm.of_key(k, limit),
            )
        )
    return rows


async def _month_spend_by_key(
    db: AsyncSession, catalog: Catalog, account: Account, now: datetime
) -> dict[str, Decimal]:
    """Each key's cost this UTC month, in one usage query grouped by key (the usage API's)."""
    today = now.astimezone(UTC).date()
    rows = await usage_rows(
        db,
        catalog,
        account.id,
        start=today.replace(day=1),
        end=today + timedelta(days=1),
        group_by=("api_key_id",),
        now=now,
    )
    spend: dict[str, Decimal] = {}
    for row in rows:
        key_id = row["groupBy"].get("api_key_id")
        if key_id and row["currency"] == account.currency:
            spend[key_id] = spend.get(key_id, Decimal(0)) + Decimal(row["cost"])
    return spend


def parse_expiry(text: str, now: datetime) -> datetime | None:
    """A datetime-local value (`2027-01-31T18:00`), read as UTC; blank for never."""
    text = text.strip()
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidRequest(
            "The expiry must be a date and time such as 2027-01-31 18:00 (UTC).",
            param="expires_at",
        ) from None
    value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if value <= now:
        # The API takes it (the key is then refused at once); here it is surely a typo.
        raise InvalidRequest("The expiry must be in the future.", param="expires_at")
    return value


def key_fields(form: KeyForm, now: datetime, *, creating: bool) -> KeyFields:
    """The form as the API's `KeyFields`: a change sets the limit, models and expiry (blank
    clears them) and keeps the name and scope."""
    if creating:
        name = " ".join(form.name.split())
        if "\x00" in name:
            raise InvalidRequest("A key's name cannot contain the NUL character.")
        if len(name) > KEY_NAME_MAX:
            raise InvalidRequest(f"A key's name can be at most {KEY_NAME_MAX} characters.")
    amount = clean_amount(form.limit_amount)
    expires = parse_expiry(form.expires_at, now)
    return KeyFields(
        name=(name or None) if creating else UNSET,
        scope=form.scope if creating else UNSET,
        spend_limit={
            "amount": amount,
            "period": form.limit_period,
            "timezone": form.limit_timezone.strip() or "UTC",
        }
        if amount
        else None,
        allowed_models=list(form.models) or None,
        expires_at=None if expires is None else expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
    )


def _changes(form: KeyForm, catalog: Catalog, now: datetime, *, creating: bool) -> KeyChanges:
    try:
        return key_changes(key_fields(form, now, creating=creating), catalog, now)
    except InvalidRequest as exc:
        for field, label in _FIELD_LABELS:
            if exc.message.startswith(field):
                raise InvalidRequest(label + exc.message[len(field) :], param=exc.param) from exc
        raise


async def create_key(
    db: AsyncSession,
    catalog: Catalog,
    account_id: uuid.UUID,
    form: KeyForm,
    *,
    creator: Principal,
    now: datetime,
) -> tuple[ApiKey, str]:
    changes = _changes(form, catalog, now, creating=True)
    return await accounts.issue_key(db, account_id, changes=changes, creator=creator)


async def update_key(
    db: AsyncSession,
    catalog: Catalog,
    account_id: uuid.UUID,
    key_id: str,
    form: KeyForm,
    *,
    creator: Principal,
    now: datetime,
) -> ApiKey:
    """Its limit, models and expiry, by the rights of `creator`; only a key of this account."""
    wanted = _key_id(key_id)
    changes = _changes(form, catalog, now, creating=False)
    try:
        key, _ = await accounts.update_key(
            db, wanted, changes, account_id=account_id, creator=creator
        )
    except NotFound:
        raise NotFound(KEY_NOT_FOUND) from None
    if key.revoked_at is not None:
        raise InvalidRequest("That key was revoked: it can't be changed.")
    return key


KEY_NOT_FOUND = "That key doesn't exist (or belongs to another account)."


def _key_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise NotFound(KEY_NOT_FOUND) from None


async def revoke_key(db: AsyncSession, account_id: uuid.UUID, key_id: str) -> ApiKey:
    """Only a key of this account: another account's key id is "not found" like a made-up one."""
    try:
        return await accounts.revoke_key(db, _key_id(key_id), account_id=account_id)
    except NotFound:
        raise NotFound(KEY_NOT_FOUND) from None


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


# ── notifications ───────────────────────────────────────────────────────────────────────────

# The emails of SPEC 11 as the form offers them: a label and when each is sent.
EMAIL_KINDS: dict[EventType, tuple[str, str]] = {
    EventType.CREDIT_LOW: ("Low balance", "when available credit falls below your threshold"),
    EventType.PAYMENT_SUCCEEDED: ("Payment receipt", "for each top-up"),
    EventType.INVOICE_FINALIZED: ("Invoice issued", "each month, with the PDF attached"),
    EventType.AUTO_RECHARGE_FAILED: ("Auto-recharge failed", "when a recharge is declined"),
    EventType.KEY_LIMIT_REACHED: (
        "Key limit reached",
        "when an API key reaches its spend limit",
    ),
}
EVENT_LABELS: dict[str, str] = {
    EventType.CREDIT_LOW: "Low balance",
    EventType.CREDIT_DEPLETED: "Credit ran out",
    EventType.KEY_LIMIT_REACHED: "Key limit reached",
    EventType.USER_LIMIT_REACHED: "End-user limit reached",
    EventType.PAYMENT_SUCCEEDED: "Payment received",
    EventType.PAYMENT_REFUNDED: "Payment refunded",
    EventType.AUTO_RECHARGE_SUCCEEDED: "Auto-recharge",
    EventType.AUTO_RECHARGE_FAILED: "Auto-recharge failed",
    EventType.INVOICE_FINALIZED: "Invoice issued",
    EventType.TIER_CHANGED: "Tier changed",
    EventType.ACCOUNT_SUSPENDED: "Account suspended",
}


@dataclass(frozen=True, slots=True)
class EmailKind:
    type: EventType
    label: str
    when: str


def email_kinds() -> list[EmailKind]:
    """Every email a customer can turn off, in the notifications domain's order."""
    return [
        EmailKind(t, *EMAIL_KINDS.get(t, (EMAIL_SUBJECTS[t].split(" {")[0], "")))
        for t in EMAIL_SUBJECTS
    ]


@dataclass(frozen=True, slots=True)
class NotificationForm:
    """The settings form, as typed or as the account has it."""

    email: str = ""  # blank: no address, so no emails
    threshold: str = ""  # blank: no low-balance notification
    emails_on: frozenset[str] = frozenset(t.value for t in EMAIL_SUBJECTS)

    @classmethod
    def of_account(cls, account: Account) -> NotificationForm:
        threshold = account.low_balance_threshold
        return cls(
            email=account.email or "",
            threshold="" if threshold is None else money_str(threshold),
            emails_on=frozenset(t.value for t in EMAIL_SUBJECTS if t not in account.emails_off),
        )


def parse_threshold(text: str) -> Decimal | None:
    """The low-balance threshold as typed (`€5`, ` 5.00 `); blank for none. What the ledger's
    columns hold exactly, like the admin API's `low_balance_threshold`."""
    cleaned = clean_amount(text)
    if not cleaned:
        return None
    try:
        return parse_money(cleaned, field="The low-balance threshold")
    except ValueError as exc:
        message = str(exc)
        if "decimal string" in message:
            message = (
                f"The low-balance threshold must be an amount such as 10.00, not {text[:40]!r}."
            )
        raise InvalidRequest(message.rstrip(".") + ".", param="low_balance_threshold") from exc


async def save_notifications(db: AsyncSession, account: Account, form: NotificationForm) -> None:
    """The form to `notifications.save_settings`; `account` must be locked."""
    email = form.email.strip()
    await notifications.save_settings(
        db,
        account,
        email=email or None,
        low_balance_threshold=parse_threshold(form.threshold),
        emails_on={t for t in EMAIL_SUBJECTS if t.value in form.emails_on},
    )


@dataclass(frozen=True, slots=True)
class NotificationRow:
    type: str
    label: str
    time: datetime
    summary: str
    link: str | None  # the page the event is about (an invoice)
    email: str  # what became of its email, in a few words
    email_state: str  # "ok", "pending", "failed" or "none", for the page's styling


def _amount(data: dict[str, Any], key: str, currency: str) -> str:
    try:
        return fmt.money(Decimal(str(data[key])), str(data.get("currency") or currency))
    except (KeyError, ArithmeticError, ValueError):
        return "—"


def _limit_words(data: dict[str, Any]) -> str:
    try:
        return LIMIT_WORDS[LimitPeriod(str(data.get("period")))][0]
    except ValueError:
        return ""


def event_summary(
    type_: str, data: dict[str, Any], currency: str, key_prefixes: dict[str, str]
) -> str:
    """One line saying what happened, from the event's webhook data (SPEC 11)."""

    def money(key: str) -> str:
        return _amount(data, key, currency)

    match type_:
        case EventType.CREDIT_LOW:
            return f"Available credit {money('available')} fell below {money('threshold')}."
        case EventType.CREDIT_DEPLETED:
            return f"A request was refused for lack of credit ({money('available')} available)."
        case EventType.KEY_LIMIT_REACHED:
            prefix = key_prefixes.get(str(data.get("api_key_id")))
            key = f"Key {prefix}…" if prefix else "An API key"
            return (
                f"{key} reached its limit of {money('limit')} {_limit_words(data)}".rstrip() + "."
            )
        case EventType.USER_LIMIT_REACHED:
            return (
                f"End user {str(data.get('user', ''))[:80]!r} reached the limit of "
                f"{money('limit')} {_limit_words(data)}".rstrip()
                + "."
            )
        case EventType.PAYMENT_SUCCEEDED:
            return f"{money('amount')} added to your credit."
        case EventType.PAYMENT_REFUNDED:
            return f"{money('amount')} refunded."
        case EventType.AUTO_RECHARGE_SUCCEEDED:
            return f"Auto-recharge added {money('amount')}."
        case EventType.AUTO_RECHARGE_FAILED:
            reason = str(data.get("reason") or "").strip()
            return f"Charging {money('amount')} failed" + (f": {reason}" if reason else ".")
        case EventType.INVOICE_FINALIZED:
            return f"Invoice {data.get('number', '')}: {money('amount_due')} due."
        case EventType.TIER_CHANGED:
            return f"From {data.get('from', '?')} to {data.get('to', '?')}."
        case EventType.ACCOUNT_SUSPENDED:
            reason = str(data.get("reason") or "").strip()
            return "Requests are refused" + (f": {reason}" if reason else ".")
    return ""


def email_outcome(event: RecentEvent) -> tuple[str, str]:
    """What became of an event's email, and its state for styling."""
    delivery = event.email
    if delivery is None:
        if event.type not in EMAIL_SUBJECTS:
            return "No email for this kind", "none"
        return ("Queued", "pending") if not event.dispatched else ("Not emailed", "none")
    if delivery.status == DeliveryStatus.SUCCEEDED:
        return f"Sent to {delivery.email_to}", "ok"
    if delivery.status == DeliveryStatus.FAILED:
        return f"Failed to reach {delivery.email_to}", "failed"
    return ("Retrying" if delivery.last_error else "Sending"), "pending"


async def notification_rows(db: AsyncSession, account: Account) -> list[NotificationRow]:
    """The account's recent notifications, newest first."""
    events = await notifications.recent(db, account.id)
    prefixes: dict[str, str] = {}
    if any(e.type == EventType.KEY_LIMIT_REACHED for e in events):
        prefixes = {str(k.id): k.prefix for k in await key_repository.list_keys(db, account.id)}
    rows = []
    for e in events:
        email, state = email_outcome(e)
        invoice = e.data.get("invoice_id") if e.type == EventType.INVOICE_FINALIZED else None
        rows.append(
            NotificationRow(
                type=e.type,
                label=EVENT_LABELS.get(e.type, e.type),
                time=e.time,
                summary=event_summary(e.type, e.data, account.currency, prefixes),
                link=f"/dashboard/invoices/{invoice}" if invoice else None,
                email=email,
                email_state=state,
            )
        )
    return rows
