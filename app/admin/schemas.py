"""Request bodies of the admin API; unknown fields are refused rather than ignored."""

from __future__ import annotations

import msgspec

from app.accounts.schemas import AccountFields, KeyFields, Text
from app.credits.schemas import LedgerKind

__all__ = ["AccountFields", "AddCredit", "CreateAccount", "KeyFields", "Suspend"]


class CreateAccount(msgspec.Struct, forbid_unknown_fields=True):
    name: Text
    email: Text | None = None


class AddCredit(msgspec.Struct, forbid_unknown_fields=True):
    amount: str | int
    kind: str = LedgerKind.PURCHASE.value
    reference: Text | None = None
    description: Text | None = None


class Suspend(msgspec.Struct, forbid_unknown_fields=True):
    reason: Text | None = None
