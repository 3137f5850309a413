"""Accounts: search and list; an account's page (balance, ledger with its running balance,
keys and their limits, usage by model, invoices, payments, auto-recharge, notifications); and
the actions on it — grant or adjust credit with a reason, suspend or unsuspend, revoke a key,
set a key's limit — each checked against the operator's role here, on the server, and done
through the same services as the admin API, with the operator in the audit log."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from litestar import Request, Response, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath
from litestar.response import Redirect
from sqlalchemy.ext.asyncio import AsyncSession

from app.accounts import repository as keys_repository
from app.accounts import service as accounts
from app.accounts.schemas import KeyChanges
from app.audit import service as audit
from app.audit.service import AuditAction
from app.console import repository
from app.console.render import flash, page
from app.console.schemas import Permission
from app.console.session import HOME, Staff
from app.credits import service as credits
from app.credits.limits import InvalidLimit, parse_spend_limit
from app.dashboard.chart import daily_chart
from app.db.engine import unit_of_work
from app.errors import InvalidRequest, NotFound
from app.invoices import repository as invoices
from app.money import parse_money
from app.payments.recharge import auto_recharge
from app.usage.service import cost_per_day

DAYS = 30


def _month_start() -> datetime:
    now = datetime.now(UTC)
    return datetime(now.year, now.month, 1, tzinfo=UTC)


@get("/accounts")
async def account_list(
    request: Request[Any, Any, Any],
    staff: NamedDependency[Staff],
    db: NamedDependency[AsyncSession],
) -> Response[str]:
    staff.require(Permission.READ)
    q = (request.query_params.get("q") or "").strip() or None
    sort = request.query_params.get("sort") or "newest"
    try:
        offset = max(0, int(request.query_params.get("offset") or 0))
    except ValueError:
        offset = 0
    rows = await repository.accounts(db, q=q, sort=sort, month_start=_month_start(), offset=offset)
    return page(
        request,
        "console_accounts.html",
        staff=staff,
        nav="accounts",
        rows=rows,
        q=q or "",
        sort=sort,
        offset=offset,
        page_size=repository.PAGE,
    )


def _account_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise NotFound(f"No account with id {value}") from None


@get("/accounts/{account_id:str}")
async def account_page(
    request: Request[Any, Any, Any],
    account_id: FromPath[str],
    staff: NamedDependency[Staff],
    db: NamedDependency[AsyncSession],
    state: State,
) -> Response[str]:
    staff.require(Permission.READ)
    account = await accounts.get_account(db, _account_id(account_id))
    before = None
    if cursor := request.query_params.get("before"):
        try:
            entry_id = uuid.UUID(cursor)
        except ValueError:
            entry_id = None
        at = await repository.ledger_entry_time(db, account.id, entry_id) if entry_id else None
        if at is not None and entry_id is not None:
            before = (at, entry_id)
    ledger = await repository.ledger(db, account.id, before=before)
    now = datetime.now(UTC)
    today = now.date()
    first = today - timedelta(days=DAYS - 1)
    per_day = await cost_per_day(db, account.id, first, today + timedelta(days=1))
    days = [
        (first + timedelta(days=i), per_day.get(first + timedelta(days=i), Decimal(0)))
        for i in range(DAYS)
    ]
    keys = await keys_repository.list_keys(db, account.id)
    spend = await credits.key_period_spend(db, account, now)
    return page(
        request,
        "console_account.html",
        staff=staff,
        nav="accounts",
        a=credits.account_view(account, state.tiers),
        account=account,
        ledger=ledger,
        has_more=len(ledger) == repository.PAGE,
        chart=daily_chart(days, account.currency, today),
        by_model=await repository.usage_by_model(db, account.id, _month_start()),
        keys=[(k, accounts.key_limit(account, k), spend.get(str(k.id))) for k in keys],
        invoices=await invoices.list_invoices(db, account.id),
        payments=await repository.payments(db, account.id),
        recharge=await auto_recharge(db, account),
        error=None,
    )


# ── actions ─────────────────────────────────────────────────────────────────────────────────


def _back(account_id: uuid.UUID, message: str, request: Request[Any, Any, Any]) -> Response[Any]:
    flash(request, message)
    return Redirect(f"{HOME}/accounts/{account_id}", status_code=303)


@post("/accounts/{account_id:str}/credit", status_code=200)
async def change_credit(
    request: Request[Any, Any, Any],
    account_id: FromPath[str],
    staff: NamedDependency[Staff],
    state: State,
) -> Response[Any]:
    staff.require(Permission.CREDIT)
    wanted = _account_id(account_id)
    form = await request.form()
    kind = str(form.get("kind") or "grant")
    reason = str(form.get("reason") or "").strip()
    try:
        amount = parse_money(str(form.get("amount") or ""), field="amount")
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="amount") from exc
    if not reason:
        raise InvalidRequest("Give a reason: it goes in the ledger and the audit log.")
    async with unit_of_work(state.sessionmaker) as db:
        if kind == "adjustment":
            entry = await credits.adjust_credit(db, wanted, amount=amount, reason=reason)
            action = AuditAction.CREDIT_ADJUSTED
        elif kind == "grant":
            entry = (
                await credits.add_credit(
                    db, wanted, amount=amount, kind="grant", reference=None, description=reason
                )
            ).entry
            action = AuditAction.CREDIT_ADDED
        else:
            raise InvalidRequest("kind must be grant or adjustment", param="kind")
        view = {**credits.ledger_entry_view(entry), "description": reason}
        await audit.record(
            db, staff.actor, action, account_id=wanted, object_id=entry.id, after=view
        )
    return _back(
        wanted, f"{'Granted' if kind == 'grant' else 'Adjusted'} {view['amount']}.", request
    )


@post("/accounts/{account_id:str}/suspend", status_code=200)
async def suspend(
    request: Request[Any, Any, Any],
    account_id: FromPath[str],
    staff: NamedDependency[Staff],
    state: State,
) -> Response[Any]:
    staff.require(Permission.SUSPEND)
    wanted = _account_id(account_id)
    form = await request.form()
    reason = str(form.get("reason") or "").strip() or "suspended by an operator"
    async with unit_of_work(state.sessionmaker) as db:
        result = await accounts.suspend(db, wanted, reason)
        if result.changed:
            await audit.record(
                db,
                staff.actor,
                AuditAction.ACCOUNT_SUSPENDED,
                account_id=wanted,
                after={"reason": reason},
            )
    return _back(wanted, "Suspended: its requests are refused with 403.", request)


@post("/accounts/{account_id:str}/unsuspend", status_code=200)
async def unsuspend(
    request: Request[Any, Any, Any],
    account_id: FromPath[str],
    staff: NamedDependency[Staff],
    state: State,
) -> Response[Any]:
    staff.require(Permission.SUSPEND)
    wanted = _account_id(account_id)
    async with unit_of_work(state.sessionmaker) as db:
        result = await accounts.unsuspend(db, wanted)
        if result.changed:
            await audit.record(db, staff.actor, AuditAction.ACCOUNT_UNSUSPENDED, account_id=wanted)
    return _back(wanted, "Unsuspended.", request)


@post("/accounts/{account_id:str}/keys/{key_id:str}/revoke", status_code=200)
async def revoke_key(
    request: Request[Any, Any, Any],
    account_id: FromPath[str],
    key_id: FromPath[str],
    staff: NamedDependency[Staff],
    state: State,
) -> Response[Any]:
    staff.require(Permission.KEYS)
    wanted = _account_id(account_id)
    async with unit_of_work(state.sessionmaker) as db:
        key = await accounts.revoke_key(
            db, accounts.parse_id(key_id, param="key_id"), account_id=wanted
        )
        view = accounts.key_view(key, await accounts.get_account(db, wanted))
        await audit.record(
            db,
            staff.actor,
            AuditAction.KEY_REVOKED,
            account_id=wanted,
            object_id=key.id,
            after=view,
        )
    state.authenticator.forget(key.key_hash)
    return _back(wanted, f"Revoked {key.prefix}….", request)


@post("/accounts/{account_id:str}/keys/{key_id:str}/limit", status_code=200)
async def set_key_limit(
    request: Request[Any, Any, Any],
    account_id: FromPath[str],
    key_id: FromPath[str],
    staff: NamedDependency[Staff],
    state: State,
) -> Response[Any]:
    staff.require(Permission.KEYS)
    wanted = _account_id(account_id)
    form = await request.form()
    amount = str(form.get("amount") or "").strip()
    try:
        limit = (
            None
            if not amount
            else parse_spend_limit(
                {
                    "amount": amount,
                    "period": str(form.get("period") or "month"),
                    "timezone": str(form.get("timezone") or "UTC"),
                },
                field="spend_limit",
            )
        )
    except InvalidLimit as exc:
        raise InvalidRequest(str(exc), param=exc.param) from exc
    target = accounts.parse_id(key_id, param="key_id")
    async with unit_of_work(state.sessionmaker) as db:
        existing = await accounts.get_key(db, target, account_id=wanted)
        before = accounts.key_view(existing, await accounts.get_account(db, wanted))
        key, account = await accounts.update_key(
            db, target, KeyChanges(spend_limit=limit), account_id=wanted
        )
        after = accounts.key_view(key, account)
        await audit.record(
            db,
            staff.actor,
            AuditAction.KEY_UPDATED,
            account_id=wanted,
            object_id=key.id,
            before=before,
            after=after,
        )
    state.authenticator.forget(key.key_hash)
    return _back(wanted, f"{key.prefix}…: limit {'removed' if limit is None else 'set'}.", request)
