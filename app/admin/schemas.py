"""Request bodies of the admin API; unknown fields are refused rather than ignored."""

from __future__ import annotations

from typing import Annotated

import msgspec

from app.credits.schemas import LedgerKind

# Stored text: JSON allows NUL ("\u0000"), Postgres text does not, so it is a 400 here rather
# than a database error.
Text = Annotated[str, msgspec.Meta(pattern=r"^[^\x00]*$")]


class CreateAccount(msgspec.Struct, forbid_unknown_fields=True):
    name: Text
    email: Text | None = None


class CreateKey(msgspec.Struct, forbid_unknown_fields=True):
    name: Text | None = None


class AddCredit(msgspec.Struct, forbid_unknown_fields=True):
    amount: str | int
    kind: str = LedgerKind.PURCHASE.value
    reference: Text | None = None
    description: Text | None = None
