"""The `tollgate` command (SPEC section 2). Human-readable output, JSON with `--json`."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import threading
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit import service as audit
from app.audit.service import CLI, Actor, AuditAction
from app.config import Settings, load_settings
from app.credits.schemas import CREDIT_KINDS, LedgerKind
from app.db import migrate
from app.db.embedded import start_embedded_postgres, stop_embedded_postgres
from app.db.engine import create_engine, create_sessionmaker, unit_of_work
from app.errors import TollgateError

CLI_ACTOR = Actor(CLI)

T = TypeVar("T")


def resolve_database_url(settings: Settings) -> str:
    """DATABASE_URL, or the embedded server under TOLLGATE_DATA_DIR (started here, stopped
    when this process exits)."""
    if settings.database_url:
        return settings.database_url
    _terminate_as_interrupt()
    return start_embedded_postgres(settings.data_dir)


def _terminate_as_interrupt() -> None:
    """SIGTERM raises KeyboardInterrupt, as SIGINT does, where it would otherwise end the process
    at once: the atexit hook that stops the embedded server then runs for both (`serve` and
    `demo` handle both signals themselves, with `app.server.Shutdown`)."""
    if threading.current_thread() is threading.main_thread() and (
        signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    ):
        signal.signal(signal.SIGTERM, signal.default_int_handler)


def prepared_database(settings: Settings) -> str:
    url = resolve_database_url(settings)
    migrate.upgrade(url)
    return url


def run_in_transaction(settings: Settings, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    url = prepared_database(settings)

    async def main() -> T:
        engine = create_engine(url, pool_size=1)
        try:
            async with unit_of_work(create_sessionmaker(engine)) as session:
                return await work(session)
        finally:
            await engine.dispose()

    try:
        return asyncio.run(main())
    except TollgateError as exc:
        raise click.ClickException(exc.message) from exc


def emit(as_json: bool, payload: dict[str, Any], human: str) -> None:
    click.echo(json.dumps(payload, indent=2) if as_json else human)


def fail(message: str) -> None:
    raise click.ClickException(message)


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Tollgate: an OpenAI-compatible LLM gateway that meters and bills every request."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1))
def serve(host: str, port: int, workers: int) -> None:
    """Apply pending migrations and run the gateway, scheduler and usage writer."""
    settings = load_settings(TOLLGATE_HOST=host, TOLLGATE_PORT=port)
    if not settings.admin_token:
        fail("TOLLGATE_ADMIN_TOKEN is required by `serve` (`demo` generates one).")
    if not (settings.upstream_base_url or settings.upstreams_file):
        fail(
            "No upstream: set UPSTREAM_BASE_URL (and UPSTREAM_API_KEY) or TOLLGATE_UPSTREAMS_FILE."
        )
    from app.server import Shutdown, run_server

    # SIGINT and SIGTERM alike: the server drains and stops, then the embedded database (if
    # this process started it) stops; a second signal cuts the drain short.
    with Shutdown() as shutdown:
        try:
            url = prepared_database(settings)
            # Workers are separate processes: they find the database (embedded or not) here.
            os.environ["DATABASE_URL"] = url
            os.environ["TOLLGATE_HOST"] = host
            os.environ["TOLLGATE_PORT"] = str(port)
            run_server(host=host, port=port, workers=workers, shutdown=shutdown)
        finally:
            stop_embedded_postgres()


@main.command(name="migrate")
def migrate_command() -> None:
    """Apply pending database migrations (`alembic upgrade head`)."""
    prepared_database(load_settings())
    click.echo("Database is at the latest migration.")


@main.command()
@click.option("--port", default=8080, show_default=True, type=int)
def demo(port: int) -> None:
    """Run everything locally: embedded database, echo upstream, a demo account with credit."""
    from app.demo.run import run_demo

    run_demo(port=port)


@main.group()
def accounts() -> None:
    """Manage customer accounts."""


@accounts.command(name="create")
@click.option("--name", required=True)
@click.option("--email", default=None)
@json_option
def accounts_create(name: str, email: str | None, as_json: bool) -> None:
    """Create an account."""
    from app.accounts import service
    from app.credits.service import account_view
    from app.credits.tiers import load_tiers

    settings = load_settings()
    tiers = load_tiers(settings.pricing_dir / "tiers.toml")

    async def work(session: AsyncSession) -> dict[str, Any]:
        account = await service.create_account(session, name=name, email=email)
        view = account_view(account, tiers)
        await audit.record(
            session, CLI_ACTOR, AuditAction.ACCOUNT_CREATED, account_id=account.id, after=view
        )
        return view

    view = run_in_transaction(settings, work)
    emit(as_json, view, f"Created account {view['id']} ({view['name']}).")


@main.group()
def keys() -> None:
    """Manage API keys."""


@keys.command(name="create")
@click.argument("account")
@click.option("--name", default=None)
@click.option("--scope", type=click.Choice(["full", "inference"]), default="full")
@click.option("--spend-limit", default=None, help="Decimal amount per --period.")
@click.option("--period", type=click.Choice(["day", "week", "month", "total"]), default="month")
@click.option("--timezone", default="UTC", help="IANA zone of the limit's periods.")
@click.option("--allowed-model", "allowed_models", multiple=True, help="Repeat for several.")
@click.option("--expires-at", default=None, help="RFC 3339 time.")
@json_option
def keys_create(
    account: str,
    name: str | None,
    scope: str,
    spend_limit: str | None,
    period: str,
    timezone: str,
    allowed_models: tuple[str, ...],
    expires_at: str | None,
    as_json: bool,
) -> None:
    """Create an API key for ACCOUNT (an account id). The key is shown once."""
    from datetime import UTC, datetime

    from app.accounts import service
    from app.accounts.schemas import KeyFields, key_changes
    from app.pricing import load_catalog

    settings = load_settings()
    fields = KeyFields(
        name=name,
        scope=scope,
        spend_limit=None
        if spend_limit is None
        else {"amount": spend_limit, "period": period, "timezone": timezone},
        allowed_models=list(allowed_models) or None,
        expires_at=expires_at,
    )

    async def work(session: AsyncSession) -> dict[str, Any]:
        changes = key_changes(fields, load_catalog(settings.pricing_dir), datetime.now(UTC))
        key, plaintext = await service.issue_key(session, _account_id(account), changes=changes)
        view = service.key_view(key, await service.get_account(session, key.account_id))
        await audit.record(
            session,
            CLI_ACTOR,
            AuditAction.KEY_CREATED,
            account_id=key.account_id,
            object_id=key.id,
            after=view,
        )
        return {**view, "key": plaintext}

    view = run_in_transaction(settings, work)
    emit(
        as_json,
        view,
        f"API key {view['id']} for account {view['account_id']}:\n\n  {view['key']}\n\n"
        "Store it now: it is shown only once.",
    )


@main.group()
def operators() -> None:
    """Operators of the console (/console)."""


@operators.command(name="create")
@click.argument("email")
@click.option(
    "--role",
    type=click.Choice(["viewer", "billing", "admin"]),
    required=True,
    help="What they may do.",
)
@json_option
def operators_create(email: str, role: str, as_json: bool) -> None:
    """Create an operator; prints a one-time link (24 h) to set the password."""
    from app.console import operators as staff
    from app.console.schemas import OperatorRole

    settings = load_settings()

    async def work(session: AsyncSession) -> dict[str, Any]:
        operator, link = await staff.create_operator(
            session, email, OperatorRole(role), settings.resolved_public_url
        )
        await audit.record(
            session,
            CLI_ACTOR,
            AuditAction.OPERATOR_CREATED,
            object_id=operator.id,
            after={"email": operator.email, "role": operator.role},
        )
        return {"id": str(operator.id), "email": operator.email, "role": role, "link": link}

    view = run_in_transaction(settings, work)
    emit(
        as_json,
        view,
        f"Operator {view['email']} ({role}). Set the password within 24 hours at:\n\n"
        f"  {view['link']}",
    )


@main.group()
def credits() -> None:
    """Manage prepaid credit."""


@credits.command(name="add")
@click.argument("account")
@click.argument("amount")
@click.option(
    "--kind",
    type=click.Choice([kind.value for kind in CREDIT_KINDS]),
    default=LedgerKind.PURCHASE.value,
    show_default=True,
)
@click.option(
    "--reference", default=None, help="Idempotency key: a repeated reference is not credited twice."
)
@json_option
def credits_add(account: str, amount: str, kind: str, reference: str | None, as_json: bool) -> None:
    """Add AMOUNT (a decimal string) of credit to ACCOUNT."""
    from app.credits import service
    from app.money import parse_money

    try:
        value = parse_money(amount, field="AMOUNT")
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc

    async def work(session: AsyncSession) -> dict[str, Any]:
        result = await service.add_credit(
            session, _account_id(account), amount=value, kind=kind, reference=reference
        )
        view = service.ledger_entry_view(result.entry)
        if result.created:
            await audit.record(
                session,
                CLI_ACTOR,
                AuditAction.CREDIT_ADDED,
                account_id=result.entry.account_id,
                object_id=result.entry.id,
                after=view,
            )
        return {**view, "created": result.created}

    view = run_in_transaction(load_settings(), work)
    verb = "Added" if view["created"] else "Already credited (same reference):"
    emit(
        as_json, view, f"{verb} {view['amount']} ({view['kind']}) to account {view['account_id']}."
    )


@main.group()
def pricing() -> None:
    """Rate tables."""


@pricing.command(name="check")
@json_option
def pricing_check(as_json: bool) -> None:
    """Validate every rate table and the tiers, then print the catalog."""
    from app.credits.tiers import TierConfigError, load_tiers
    from app.pricing import PricingConfigError, catalog_as_json, load_catalog, render_catalog_table

    settings = load_settings()
    try:
        catalog = load_catalog(settings.pricing_dir)
        tiers = load_tiers(settings.pricing_dir / "tiers.toml")
    except (PricingConfigError, TierConfigError) as exc:
        raise click.ClickException(str(exc)) from exc
    tier_rows = [
        {"name": t.name, "min_total": str(t.min_total), "rpm": t.rpm, "tpm": t.tpm}
        for t in tiers.tiers
    ]
    if as_json:
        emit(True, {**catalog_as_json(catalog), "tiers": tier_rows}, "")
        return
    click.echo(render_catalog_table(catalog))
    click.echo(f"\nTiers (by cumulative {tiers.basis}):")
    for row in tier_rows:
        click.echo(
            f"  {row['name']:<12} from {row['min_total']:>6}"
            f"  {row['rpm']:>5} RPM  {row['tpm']:>9,} TPM"
        )
    click.echo(f"\nOK: {settings.pricing_dir}")


@main.group()
def invoices() -> None:
    """Monthly invoices."""


@invoices.command(name="run")
@click.option("--period", required=True, help="The month to invoice, YYYY-MM (UTC).")
@json_option
def invoices_run(period: str, as_json: bool) -> None:
    """Issue the invoices of a month that has ended (running it again changes nothing)."""
    from app.invoices.tasks import describe_run, run_period_blocking

    settings = load_settings()
    try:
        result = run_period_blocking(prepared_database(settings), settings, period)
    except TollgateError as exc:
        raise click.ClickException(exc.message) from exc
    emit(as_json, result, describe_run(result))


def _account_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an account id") from None


@main.command(name="reconcile")
@json_option
def reconcile_command(as_json: bool) -> None:
    """Check every account: balance = sum(ledger), usage = −sum(usage ledger) = sum(event
    costs), held = sum(holds). Exit status 1 on any mismatch."""
    from app.usage import reconciliation

    report = run_in_transaction(load_settings(), reconciliation.reconcile)
    lines = [f"Checked {report.accounts} accounts: {len(report.mismatches)} mismatched."]
    lines += [f"  {m.account_id}: {'; '.join(m.failed)}  {m.view()}" for m in report.mismatches]
    emit(as_json, report.view(), "\n".join(lines))
    if report.mismatches:
        raise SystemExit(1)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
