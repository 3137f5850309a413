"""Admin routes: accounts, keys, credits, suspension and the audit log (SPEC 5). Every change
is recorded in the audit log in its own transaction, with the admin token as actor."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from litestar import Request, Router, delete, get, patch, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody
from msgspec import UNSET
from sqlalchemy.ext.asyncio import AsyncSession

from app.accounts import service as accounts
from app.accounts.schemas import key_changes, user_spend_limit
from app.admin.guards import require_admin
from app.admin.schemas import AccountFields, AddCredit, CreateAccount, KeyFields, Suspend
from app.audit import service as audit
from app.audit.service import ADMIN_TOKEN, Actor, AuditAction
from app.credits import service as credits
from app.db.engine import unit_of_work
from app.errors import InvalidRequest
from app.money import parse_money


def _actor(request: Request[Any, Any, Any]) -> Actor:
    return Actor(ADMIN_TOKEN, request.client.host if request.client else None)


@post("/accounts", status_code=201)
async def create_account(
    request: Request[Any, Any, Any],
    data: JSONBody[CreateAccount],
    db: NamedDependency[AsyncSession],
    state: State,
) -> dict[str, Any]:
    account = await accounts.create_account(db, name=data.name, email=data.email)
    view = credits.account_view(account, state.tiers)
    await audit.record(
        db, _actor(request), AuditAction.ACCOUNT_CREATED, account_id=account.id, after=view
    )
    return view


@get("/accounts/{account_id:str}")
async def get_account(
    account_id: FromPath[str], db: NamedDependency[AsyncSession], state: State
) -> dict[str, Any]:
    account = await accounts.get_account(db, accounts.parse_id(account_id, param="account_id"))
    return credits.account_view(account, state.tiers)


@patch("/accounts/{account_id:str}")
async def update_account(
    request: Request[Any, Any, Any],
    account_id: FromPath[str],
    data: JSONBody[AccountFields],
    db: NamedDependency[AsyncSession],
    state: State,
) -> dict[str, Any]:
    account = await credits.lock_account(db, accounts.parse_id(account_id, param="account_id"))
    before = credits.account_view(account, state.tiers)
    if data.name is not UNSET:
        name = data.name.strip()
        if not name:
            raise InvalidRequest("name must not be empty", param="name")
        account.name = name
    if data.email is not UNSET:
        account.email = data.email
    if data.low_balance_threshold is not UNSET:
        account.low_balance_threshold = (
            None
            if data.low_balance_threshold is None
            else _money(data.low_balance_threshold, "low_balance_threshold")
        )
        account.low_balance_armed = True  # a new threshold: the next crossing notifies
    if data.user_spend_limit is not UNSET:
        await credits.set_user_limit(db, account, user_spend_limit(data.user_spend_limit))
    await db.flush()
    after = credits.account_view(account, state.tiers)
    await audit.record(
        db,
        _actor(request),
        AuditAction.ACCOUNT_UPDATED,
        account_id=account.id,
        before=before,
        after=after,
    )
    return after


@post("/accounts/{account_id:str}/suspend", status_code=200)
async def suspend_account(
    request: Request[Any, Any, Any],
    account_id: FromPath[str],
    db: NamedDependency[AsyncSession],
    state: State,
    data: JSONBody[Suspend | None] = None,
) -> dict[str, Any]:
    reason = (data.reason if data else None) or "suspended by the operator"
    result = await accounts.suspend(db, accounts.parse_id(account_id, param="account_id"), reason)
    if result.changed:
        await audit.record(
            db,
            _actor(request),
            AuditAction.ACCOUNT_SUSPENDED,
            account_id=result.account.id,
            after={"reason": reason},
        )
    return credits.account_view(result.account, state.tiers)


@post("/accounts/{account_id:str}/unsuspend", status_code=200)
async def unsuspend_account(
    request: Request[Any, Any, Any],
    account_id: FromPath[str],
    db: NamedDependency[AsyncSession],
    state: State,
) -> dict[str, Any]:
    result = await accounts.unsuspend(db, accounts.parse_id(account_id, param="account_id"))
    if result.changed:
        await audit.record(
            db, _actor(request), AuditAction.ACCOUNT_UNSUSPENDED, account_id=result.account.id
        )
    return credits.account_view(result.account, state.tiers)


@post("/accounts/{account_id:str}/keys", status_code=201)
async def create_key(
    request: Request[Any, Any, Any],
    account_id: FromPath[str],
    db: NamedDependency[AsyncSession],
    state: State,
    data: JSONBody[KeyFields | None] = None,
) -> dict[str, Any]:
    changes = key_changes(data or KeyFields(), state.catalog, datetime.now(UTC))
    key, plaintext = await accounts.issue_key(
        db, accounts.parse_id(account_id, param="account_id"), changes=changes
    )
    account = await accounts.get_account(db, key.account_id)
    view = accounts.key_view(key, account)
    await audit.record(
        db,
        _actor(request),
        AuditAction.KEY_CREATED,
        account_id=key.account_id,
        object_id=key.id,
        after=view,
    )
    return {**view, "key": plaintext}


@patch("/keys/{key_id:str}")
async def update_key(
    request: Request[Any, Any, Any], key_id: FromPath[str], data: JSONBody[KeyFields], state: State
) -> dict[str, Any]:
    changes = key_changes(data, state.catalog, datetime.now(UTC))
    wanted = accounts.parse_id(key_id, param="key_id")
    # Its own unit of work: once committed, this instance's key cache forgets the key, so
    # its next request here has the new scope, models and expiry (others within a second;
    # limits apply from the next request everywhere, as the hold reads them).
    async with unit_of_work(state.sessionmaker) as db:
        existing = await accounts.get_key(db, wanted)
        before = accounts.key_view(existing, await accounts.get_account(db, existing.account_id))
        key, account = await accounts.update_key(db, wanted, changes)
        after = accounts.key_view(key, account)
        await audit.record(
            db,
            _actor(request),
            AuditAction.KEY_UPDATED,
            account_id=key.account_id,
            object_id=key.id,
            before=before,
            after=after,
        )
    state.authenticator.forget(key.key_hash)
    return after


@delete("/keys/{key_id:str}", status_code=200)
async def revoke_key(
    request: Request[Any, Any, Any], key_id: FromPath[str], state: State
) -> dict[str, Any]:
    # Its own unit of work rather than the request's: once the revocation has committed, this
    # instance's key cache forgets the key, so its next request here is a 401.
    async with unit_of_work(state.sessionmaker) as db:
        key = await accounts.revoke_key(db, accounts.parse_id(key_id, param="key_id"))
        view = accounts.key_view(key, await accounts.get_account(db, key.account_id))
        await audit.record(
            db,
            _actor(request),
            AuditAction.KEY_REVOKED,
            account_id=key.account_id,
            object_id=key.id,
            after=view,
        )
    state.authenticator.forget(key.key_hash)
    return view


@post("/accounts/{account_id:str}/credits", status_code=201)
async def add_credit(
    request: Request[Any, Any, Any],
    account_id: FromPath[str],
    data: JSONBody[AddCredit],
    db: NamedDependency[AsyncSession],
    state: State,
) -> dict[str, Any]:
    amount = _money(data.amount, "amount")
    result = await credits.add_credit(
        db,
        accounts.parse_id(account_id, param="account_id"),
        amount=amount,
        kind=data.kind,
        reference=data.reference,
        description=data.description,
        tiers=state.tiers,
    )
    view = credits.ledger_entry_view(result.entry)
    if result.created:
        await audit.record(
            db,
            _actor(request),
            AuditAction.CREDIT_ADDED,
            account_id=result.entry.account_id,
            object_id=result.entry.id,
            after={**view, "description": data.description},
        )
    return {**view, "created": result.created}


@get("/audit-log")
async def audit_log(
    db: NamedDependency[AsyncSession],
    actor: FromQuery[str | None] = None,
    action: FromQuery[str | None] = None,
    account_id: FromQuery[str | None] = None,
    before: FromQuery[str | None] = None,
    limit: FromQuery[int] = 50,
) -> dict[str, Any]:
    return await audit.audit_page(
        db, actor=actor, action=action, account_id=account_id, before=before, limit=limit
    )


def _money(value: object, field: str) -> Any:
    try:
        return parse_money(value, field=field)
    except ValueError as exc:
        raise InvalidRequest(str(exc), param=field) from exc


admin_router = Router(
    path="/admin",
    guards=[require_admin],
    route_handlers=[
        create_account,
        get_account,
        update_account,
        suspend_account,
        unsuspend_account,
        create_key,
        update_key,
        revoke_key,
        add_credit,
        audit_log,
    ],
    include_in_schema=False,
)
