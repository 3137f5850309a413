"""`tollgate reconcile`: the reconciliation job, run now (exit status 1 on any mismatch)."""

from __future__ import annotations

import click
from sqlalchemy.ext.asyncio import AsyncSession

from app.usage import reconciliation
from app.usage.reconciliation import ReconciliationReport


@click.command(name="reconcile")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def reconcile_command(as_json: bool) -> None:
    """Check every account: balance = sum(ledger), usage = −sum(usage ledger) = sum(event
    costs), held = sum(holds)."""
    from app.cli import emit, run_in_transaction  # the CLI imports this module
    from app.config import load_settings

    async def work(session: AsyncSession) -> ReconciliationReport:
        return await reconciliation.reconcile(session)

    report = run_in_transaction(load_settings(), work)
    lines = [f"Checked {report.accounts} accounts: {len(report.mismatches)} mismatched."]
    lines += [f"  {m.account_id}: {'; '.join(m.failed)}  {m.view()}" for m in report.mismatches]
    emit(as_json, report.view(), "\n".join(lines))
    if report.mismatches:
        raise SystemExit(1)
