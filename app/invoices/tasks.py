"""Invoice runs: the monthly job body, the admin run and the CLI run. Each account's invoice
is issued in a transaction of its own, so invoice numbers follow commit order without gaps
and one account's failure does not hold back the others."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.db.engine import create_engine, create_sessionmaker, unit_of_work
from app.errors import InvalidRequest
from app.invoices import repository, service
from app.invoices.compute import Period, parse_period, previous_period
from app.payments.config import BillingConfig, billing_config

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class RunResult:
    period: Period
    created: list[str] = field(default_factory=list)  # numbers issued by this run
    invoices: list[dict[str, Any]] = field(default_factory=list)  # all of the period's

    def as_json(self) -> dict[str, Any]:
        return {"period": self.period.label, "created": len(self.created), "data": self.invoices}


def period_to_run(text: str, *, now: datetime | None = None) -> Period:
    """A month that has ended; ValueError otherwise. An explicit run does not wait for the
    grace period: the operator asked for it now."""
    period = parse_period(text)
    if period.end > (now or datetime.now(UTC)):
        raise ValueError(f"period {period.label} has not ended yet")
    return period


async def run_invoices(
    sessionmaker: async_sessionmaker[AsyncSession], period: Period, config: BillingConfig
) -> RunResult:
    """Issue the period's missing invoices; running it again issues none."""
    result = RunResult(period)
    async with unit_of_work(sessionmaker) as session:
        account_ids = await repository.accounts_with_uninvoiced_usage(session, period.end)
    failures: list[Exception] = []
    for account_id in account_ids:
        try:
            async with unit_of_work(sessionmaker) as session:
                issued = await service.issue_invoice(session, account_id, period, config.seller)
        except Exception as exc:
            logger.exception("invoice of account %s for %s failed", account_id, period.label)
            failures.append(exc)
            continue
        if issued is not None:
            result.created.append(issued.invoice.number)
    async with unit_of_work(sessionmaker) as session:
        result.invoices = await service.views(
            session, await repository.invoices_of_period(session, period.start)
        )
    if failures:
        raise failures[0]
    logger.info("invoices for %s: %d issued", period.label, len(result.created))
    return result


async def monthly_invoices_job(
    sessionmaker: async_sessionmaker[AsyncSession],
    config: BillingConfig,
    *,
    now: datetime | None = None,
) -> RunResult | None:
    """Job body (hourly): invoice the previous calendar month once its grace period is over.
    Cheap when there is nothing left to do; None before the grace period ends."""
    now = now or datetime.now(UTC)
    period = previous_period(now)
    if now < period.end + config.invoice_grace:
        return None
    return await run_invoices(sessionmaker, period, config)


def run_period_blocking(database_url: str, settings: Settings, period: str) -> dict[str, Any]:
    """For `tollgate invoices run --period YYYY-MM`: the run's JSON (`period`, `created`,
    `data`). Raises InvalidRequest for a malformed or unfinished period."""
    try:
        parsed = period_to_run(period)
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="period") from exc

    async def main() -> dict[str, Any]:
        engine = create_engine(database_url, pool_size=1)
        try:
            result = await run_invoices(
                create_sessionmaker(engine), parsed, billing_config(settings)
            )
        finally:
            await engine.dispose()
        return result.as_json()

    return asyncio.run(main())


def describe_run(result: dict[str, Any]) -> str:
    """Human-readable output of the CLI."""
    lines = [
        f"Invoices for {result['period']}: {result['created']} issued now, "
        f"{len(result['data'])} in total."
    ]
    for invoice in result["data"]:
        lines.append(
            f"  {invoice['number']}  {invoice['subtotal']:>12} {invoice['currency']}  "
            f"{len(invoice['lines'])} lines  issued {invoice['issued_at']}"
        )
    return "\n".join(lines)
