"""The overview: revenue per day for 30 days, this month, today's requests and errors, top
accounts and models, reconciliation, the jobs' last runs and failing webhook endpoints."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from litestar import Request, Response, get
from litestar.di import NamedDependency
from sqlalchemy.ext.asyncio import AsyncSession

from app.console import repository
from app.console.render import page
from app.console.schemas import Permission
from app.console.session import Staff
from app.dashboard.chart import daily_chart
from app.db.job_state import JobName, last_result
from app.usage.service import cost_per_day

DAYS = 30


@get("/")
async def overview(
    request: Request[Any, Any, Any],
    staff: NamedDependency[Staff],
    db: NamedDependency[AsyncSession],
) -> Response[str]:
    staff.require(Permission.READ)
    now = datetime.now(UTC)
    today = now.date()
    first = today - timedelta(days=DAYS - 1)
    per_day = await cost_per_day(db, None, first, today + timedelta(days=1))
    days = [
        (first + timedelta(days=i), per_day.get(first + timedelta(days=i), Decimal(0)))
        for i in range(DAYS)
    ]
    month_start = datetime(today.year, today.month, 1, tzinfo=UTC)
    month_to_date = sum(
        (cost for day, cost in per_day.items() if day >= month_start.date()), Decimal(0)
    )
    requests, errors, active = await repository.today_requests(
        db, datetime(today.year, today.month, today.day, tzinfo=UTC)
    )
    _, reconciliation = await last_result(db, JobName.RECONCILIATION)
    return page(
        request,
        "console_overview.html",
        staff=staff,
        nav="overview",
        chart=daily_chart(days, "EUR", today),
        month_to_date=month_to_date,
        month_start=month_start.date(),
        requests=requests,
        errors=errors,
        active=active,
        top_accounts=await repository.top_accounts(db, month_start),
        top_models=await repository.usage_by_model(db, None, month_start),
        reconciliation=reconciliation,
        jobs=await repository.jobs(db),
        failing=await repository.failing_endpoints(db, now - timedelta(days=1)),
        first=first,
    )
