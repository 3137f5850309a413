"""Customer routes for the account and its credit (SPEC 3.2)."""

from __future__ import annotations

from typing import Any

from litestar import get
from litestar.datastructures import State
from litestar.di import NamedDependency
from sqlalchemy.ext.asyncio import AsyncSession

from app.accounts import service as accounts
from app.accounts.auth import Principal
from app.credits import service
from app.money import money_str


@get("/v1/account")
async def get_account(
    principal: NamedDependency[Principal], db: NamedDependency[AsyncSession], state: State
) -> dict[str, Any]:
    account = await accounts.get_account(db, principal.account_id)
    return service.account_view(account, state.tiers)


@get("/v1/credits")
async def get_credits(
    principal: NamedDependency[Principal], db: NamedDependency[AsyncSession]
) -> dict[str, Any]:
    """OpenRouter's shape plus `balance` (the ledger balance; holds not subtracted)."""
    account = await accounts.get_account(db, principal.account_id)
    return {
        "data": {
            "total_credits": money_str(account.balance + account.total_usage),
            "total_usage": money_str(account.total_usage),
            "balance": money_str(account.balance),
            "currency": account.currency,
        }
    }
