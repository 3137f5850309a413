"""Reconciliation (daily, and `tollgate reconcile`): for every account, the balance equals the
sum of its ledger entries, its usage total equals minus the sum of its usage entries and the
sum of its usage events' costs, and `held` equals the sum of its holds; for every spend-limit
counter, its spend equals the sum of its subject's events in its period and its `held` the
sum of their holds. Any account or counter where one of these fails is logged and counted in
the `tollgate_reconciliation_mismatches` gauge.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec
from prometheus_client import Gauge
from sqlalchemy.ext.asyncio import AsyncSession

from app.credits import repository as credits
from app.credits.repository import CounterTotals
from app.db import job_state
from app.db.job_state import JobName
from app.money import money_str
from app.usage import repository
from app.usage.repository import AccountTotals

logger = logging.getLogger(__name__)

MAX_RECORDED = 100  # mismatched accounts kept in the stored result (all are logged)

MISMATCHES = Gauge(
    "tollgate_reconciliation_mismatches",
    "Accounts whose balance, usage total or holds disagreed with their ledger, usage events or "
    "holds at the last reconciliation",
)


@dataclass(frozen=True, slots=True)
class Mismatch:
    account_id: uuid.UUID
    failed: tuple[str, ...]  # which identities do not hold
    totals: AccountTotals

    def view(self) -> dict[str, Any]:
        t = self.totals
        return {
            "account_id": str(self.account_id),
            "failed": list(self.failed),
            "balance": money_str(t.balance),
            "ledger_total": money_str(t.ledger_total),
            "total_usage": money_str(t.total_usage),
            "ledger_usage": money_str(t.ledger_usage),
            "event_cost": money_str(t.event_cost),
            "held": money_str(t.held),
            "holds_total": money_str(t.holds_total),
        }


def counter_view(c: CounterTotals) -> dict[str, Any]:
    return {
        "account_id": str(c.account_id),
        # A user's value is the customer's data: only whose counter it is, not the value.
        "subject": c.subject if c.subject.startswith("key:") else "user",
        "spent": money_str(c.spent),
        "event_cost": money_str(c.event_cost),
        "held": money_str(c.held),
        "holds_total": money_str(c.holds_total),
    }


@dataclass(frozen=True, slots=True)
class ReconciliationReport:
    ran_at: datetime
    accounts: int
    mismatches: list[Mismatch] = field(default_factory=list)
    counter_mismatches: list[CounterTotals] = field(default_factory=list)

    def view(self) -> dict[str, Any]:
        return {
            "ran_at": self.ran_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "accounts": self.accounts,
            "mismatches": len(self.mismatches) + len(self.counter_mismatches),
            "details": [m.view() for m in self.mismatches[:MAX_RECORDED]],
            "counter_details": [counter_view(c) for c in self.counter_mismatches[:MAX_RECORDED]],
        }


def failed_identities(t: AccountTotals) -> tuple[str, ...]:
    checks = (
        ("balance = sum(ledger)", t.balance == t.ledger_total),
        ("total_usage = -sum(usage ledger)", t.total_usage == t.ledger_usage),
        ("total_usage = sum(event costs)", t.total_usage == t.event_cost),
        ("held = sum(holds)", t.held == t.holds_total),
    )
    return tuple(name for name, holds in checks if not holds)


async def reconcile(session: AsyncSession) -> ReconciliationReport:
    """Check every account, log each mismatch, set the gauge and record the result (so every
    instance's gauge shows it). Runs in the caller's transaction."""
    checked, rows = await repository.mismatched_accounts(session)
    report = ReconciliationReport(
        ran_at=datetime.now(UTC),
        accounts=checked,
        mismatches=[Mismatch(row.account_id, failed_identities(row), row) for row in rows],
        counter_mismatches=await credits.counter_mismatches(session),
    )
    for counter in report.counter_mismatches:
        logger.error(
            "reconciliation mismatch on a spend-limit counter of account %s: %s",
            counter.account_id,
            counter_view(counter),
        )
    for mismatch in report.mismatches:
        logger.error(
            "reconciliation mismatch on account %s: %s (%s)",
            mismatch.account_id,
            "; ".join(mismatch.failed),
            mismatch.view(),
        )
    MISMATCHES.set(len(report.mismatches) + len(report.counter_mismatches))
    await job_state.save_result(
        session, JobName.RECONCILIATION, msgspec.json.encode(report.view()).decode()
    )
    if not report.mismatches and not report.counter_mismatches:
        logger.info("reconciliation: %d accounts, no mismatch", checked)
    return report


async def refresh_gauge(session: AsyncSession) -> None:
    """Show the last recorded reconciliation in this instance's gauge: the run itself happens on
    one instance only, but any instance may be scraped."""
    _, result = await job_state.last_result(session, JobName.RECONCILIATION)
    if result is not None:
        MISMATCHES.set(int(result["mismatches"]))
