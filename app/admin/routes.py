"""Admin routes: accounts, keys and credits."""

from __future__ import annotations

from typing import Any

from litestar import Router, delete, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody
from sqlalchemy.ext.asyncio import AsyncSession

from app.accounts import service as accounts
from app.admin.guards import require_admin
from app.admin.schemas import AddCredit, CreateAccount, CreateKey
from app.credits import service as credits
from app.db.engine import unit_of_work
from app.errors import InvalidRequest
from app.money import parse_money


@post("/accounts", status_code=201)
async def create_account(
    data: JSONBody[CreateAccount], db: NamedDependency[AsyncSession], state: State
) -> dict[str, Any]:
    account = await accounts.create_account(db, name=data.name, email=data.email)
    return credits.account_view(account, state.tiers)


@get("/accounts/{account_id:str}")
async def get_account(
    account_id: FromPath[str], db: NamedDependency[AsyncSession], state: State
) -> dict[str, Any]:
    account = await accounts.get_account(db, accounts.parse_id(account_id, param="account_id"))
    return credits.account_view(account, state.tiers)


@post("/accounts/{account_id:str}/keys", status_code=201)
async def create_key(
    account_id: FromPath[str],
    db: NamedDependency[AsyncSession],
    data: JSONBody[CreateKey | None] = None,
) -> dict[str, Any]:
    key, plaintext = await accounts.issue_key(
        db, accounts.parse_id(account_id, param="account_id"), name=data.name if data else None
    )
    return accounts.key_view(key, plaintext)


@delete("/keys/{key_id:str}", status_code=200)
async def revoke_key(key_id: FromPath[str], state: State) -> dict[str, Any]:
    # Its own unit of work rather than the request's: once the revocation has committed, this
    # instance's key cache forgets the key, so its next request here is a 401.
    async with unit_of_work(state.sessionmaker) as db:
        key = await accounts.revoke_key(db, accounts.parse_id(key_id, param="key_id"))
    state.authenticator.forget(key.key_hash)
    return accounts.key_view(key)


@post("/accounts/{account_id:str}/credits", status_code=201)
async def add_credit(
    account_id: FromPath[str], data: JSONBody[AddCredit], db: NamedDependency[AsyncSession]
) -> dict[str, Any]:
    try:
        amount = parse_money(data.amount, field="amount")
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="amount") from exc
    result = await credits.add_credit(
        db,
        accounts.parse_id(account_id, param="account_id"),
        amount=amount,
        kind=data.kind,
        reference=data.reference,
        description=data.description,
    )
    return {**credits.ledger_entry_view(result.entry), "created": result.created}


admin_router = Router(
    path="/admin",
    guards=[require_admin],
    route_handlers=[create_account, get_account, create_key, revoke_key, add_credit],
    include_in_schema=False,
)
