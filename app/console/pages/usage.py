"""Usage across accounts: by UTC day, model and account for a range of days (this month unless
chosen), optionally of one model or one account, as a table and as CSV, with revenue (the
cost charged), upstream cost and margin (SPEC 13). The figures are the usage query's own
(`app.usage.service.usage_by_day`, DAY windows grouped by model and account), so they equal
`POST /admin/usage/completions` for the same range."""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

from litestar import Request, Response, get
from litestar.di import NamedDependency
from litestar.exceptions import ValidationException
from sqlalchemy.ext.asyncio import AsyncSession

from app.console import repository
from app.console.render import page
from app.console.schemas import Permission
from app.console.session import Staff
from app.money import money_str
from app.pricing import Catalog
from app.usage.schemas import FilterValue
from app.usage.service import canonical_models, usage_by_day

MAX_DAYS = 366  # one query over at most a year of DAY windows
MAX_TABLE_ROWS = 1_000  # the page's table; the CSV has every row

CSV_COLUMNS = (
    "date",
    "account_id",
    "account_name",
    "model",
    "requests",
    "input_tokens",
    "output_tokens",
    "images",
    "search_requests",
    "cost",
    "currency",
    "upstream_cost",  # empty when no request of the row has a known upstream cost
    "margin",
    "costed_requests",
)


@dataclass(frozen=True, slots=True)
class UsageFilter:
    first: date
    last: date  # inclusive
    model: str | None
    account_id: uuid.UUID | None

    def query(self) -> str:
        """The query string that selects this again (for links and the CSV)."""
        params = {"from": self.first.isoformat(), "to": self.last.isoformat()}
        if self.model:
            params["model"] = self.model
        if self.account_id:
            params["account"] = str(self.account_id)
        return urlencode(params)


@dataclass(frozen=True, slots=True)
class UsageLine:
    """One day, account and model (or, in the summaries, a total over some of them)."""

    day: date | None
    account_id: uuid.UUID | None
    account_name: str
    model: str | None
    currency: str
    requests: int
    input_tokens: int
    output_tokens: int
    images: int
    search_requests: int
    cost: Decimal  # the revenue
    # Over the requests whose upstream cost is known (`app.usage.service.DayUsage`).
    costed_requests: int
    upstream_cost: Decimal
    margin: Decimal

    def plus(self, other: UsageLine) -> UsageLine:
        return UsageLine(
            self.day,
            self.account_id,
            self.account_name,
            self.model,
            self.currency,
            self.requests + other.requests,
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.images + other.images,
            self.search_requests + other.search_requests,
            self.cost + other.cost,
            self.costed_requests + other.costed_requests,
            self.upstream_cost + other.upstream_cost,
            self.margin + other.margin,
        )


def default_filter(today: date) -> UsageFilter:
    """This month, every model and account."""
    first = today.replace(day=1)
    following = date(first.year + first.month // 12, first.month % 12 + 1, 1)
    return UsageFilter(first, following - timedelta(days=1), None, None)


def parse_filter(params: Mapping[str, str | None], today: date) -> UsageFilter:
    """`from`/`to` (dates, `to` included), `model`, `account` (an id); ValueError when
    malformed. A blank field keeps its default."""
    default = default_filter(today)

    def day(name: str, fallback: date) -> date:
        value = (params.get(name) or "").strip()
        if not value:
            return fallback
        try:
            return date.fromisoformat(value)
        except ValueError:
            message = f"{name} must be a date like 2026-05-01, not {value[:20]!r}."
            raise ValueError(message) from None

    first, last = day("from", default.first), day("to", default.last)
    if last < first:
        raise ValueError("The range ends before it starts.")
    if (last - first).days + 1 > MAX_DAYS:
        raise ValueError(f"Choose at most {MAX_DAYS} days.")
    model = (params.get("model") or "").strip() or None
    account = (params.get("account") or "").strip()
    try:
        account_id = uuid.UUID(account) if account else None
    except ValueError:
        raise ValueError(f"account must be an account id, not {account[:40]!r}.") from None
    return UsageFilter(first, last, model, account_id)


def usage_filters(wanted: UsageFilter, catalog: Catalog) -> dict[str, tuple[FilterValue, ...]]:
    """The usage query's filters for the chosen model and account."""
    filters: dict[str, tuple[FilterValue, ...]] = {}
    if wanted.model:
        # As the usage query does: an alias or another spelling matches the stored name.
        filters["model"] = canonical_models(catalog, (wanted.model,))
    if wanted.account_id:
        filters["user_id"] = (wanted.account_id,)
    return filters


async def usage_lines(db: AsyncSession, catalog: Catalog, wanted: UsageFilter) -> list[UsageLine]:
    """By day, then account name, then model."""
    rows = await usage_by_day(
        db,
        wanted.first,
        wanted.last,
        group_by=("model", "user_id"),
        filters=usage_filters(wanted, catalog),
    )
    names = await repository.account_names(db, [row.group[1] for row in rows])
    lines = [
        UsageLine(
            day=row.day,
            account_id=row.group[1],
            account_name=names.get(row.group[1], ""),
            model=None if row.group[0] is None else str(row.group[0]),
            currency=row.currency,
            requests=row.requests,
            input_tokens=row.input_tokens,
            output_tokens=row.output_tokens,
            images=row.images,
            search_requests=row.search_requests,
            cost=row.revenue,
            costed_requests=row.costed_requests,
            upstream_cost=row.upstream_cost,
            margin=row.margin,
        )
        for row in rows
    ]
    lines.sort(
        key=lambda x: (x.day, x.account_name.lower(), str(x.account_id), x.model or "", x.currency)
    )
    return lines


def totals(lines: list[UsageLine], *, by: str) -> list[UsageLine]:
    """Sums per `by` ("account", "model", "day_model" or "currency") and currency, largest cost
    first (by day first for "day_model")."""
    summed: dict[tuple[Any, str], UsageLine] = {}
    for line in lines:
        if by == "account":
            key: Any = line.account_id
            line = UsageLine(None, line.account_id, line.account_name, None, *_measures(line))
        elif by == "model":
            key = line.model
            line = UsageLine(None, None, "", line.model, *_measures(line))
        elif by == "day_model":
            key = (line.day, line.model)
            line = UsageLine(line.day, None, "", line.model, *_measures(line))
        else:
            key = None
            line = UsageLine(None, None, "", None, *_measures(line))
        before = summed.get((key, line.currency))
        summed[(key, line.currency)] = line if before is None else before.plus(line)
    return sorted(
        summed.values(),
        key=lambda x: (x.day or date.min, -x.cost, x.account_name, x.model or "", x.currency),
    )


def _measures(line: UsageLine) -> tuple[Any, ...]:
    return (
        line.currency,
        line.requests,
        line.input_tokens,
        line.output_tokens,
        line.images,
        line.search_requests,
        line.cost,
        line.costed_requests,
        line.upstream_cost,
        line.margin,
    )


def _spreadsheet_safe(value: str) -> str:
    # A cell starting with one of these is read as a formula by spreadsheets; names are text.
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def csv_text(lines: list[UsageLine]) -> str:
    """Every row, amounts with every decimal, as the usage API writes them."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    writer.writerows(
        [
            line.day.isoformat() if line.day else "",
            str(line.account_id),
            _spreadsheet_safe(line.account_name),
            line.model or "",
            line.requests,
            line.input_tokens,
            line.output_tokens,
            line.images,
            line.search_requests,
            money_str(line.cost),
            line.currency,
            money_str(line.upstream_cost) if line.costed_requests else "",
            money_str(line.margin) if line.costed_requests else "",
            line.costed_requests,
        ]
        for line in lines
    )
    return out.getvalue()


@get("/usage")
async def usage_page(
    request: Request[Any, Any, Any],
    staff: NamedDependency[Staff],
    db: NamedDependency[AsyncSession],
    catalog: NamedDependency[Catalog],
) -> Response[str]:
    staff.require(Permission.READ)
    today = datetime.now(UTC).date()
    error = None
    try:
        wanted = parse_filter(request.query_params, today)
    except ValueError as exc:
        error, wanted = str(exc), default_filter(today)
    lines = await usage_lines(db, catalog, wanted)
    version = catalog.version_at(datetime.now(UTC))
    return page(
        request,
        "console_usage.html",
        staff=staff,
        nav="usage",
        error=error,
        f=wanted,
        lines=lines[:MAX_TABLE_ROWS],
        line_count=len(lines),
        by_currency=totals(lines, by="currency"),
        by_account=totals(lines, by="account"),
        by_model=totals(lines, by="model"),
        by_day_model=totals(lines, by="day_model")[:MAX_TABLE_ROWS],
        models=[m.name for m in version.models] if version else [],
    )


@get("/usage.csv")
async def usage_csv(
    request: Request[Any, Any, Any],
    staff: NamedDependency[Staff],
    db: NamedDependency[AsyncSession],
    catalog: NamedDependency[Catalog],
) -> Response[str]:
    staff.require(Permission.READ)
    try:
        wanted = parse_filter(request.query_params, datetime.now(UTC).date())
    except ValueError as exc:
        raise ValidationException(str(exc)) from None
    lines = await usage_lines(db, catalog, wanted)
    name = f"tollgate-usage-{wanted.first.isoformat()}-{wanted.last.isoformat()}.csv"
    return Response(
        csv_text(lines),
        media_type="text/csv; charset=utf-8",
        headers={"content-disposition": f'attachment; filename="{name}"'},
    )
