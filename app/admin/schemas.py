"""Request bodies of the admin API; unknown fields are refused rather than ignored."""

from __future__ import annotations

import msgspec


class CreateAccount(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    email: str | None = None


class CreateKey(msgspec.Struct, forbid_unknown_fields=True):
    name: str | None = None


class AddCredit(msgspec.Struct, forbid_unknown_fields=True):
    amount: str | int
    kind: str = "purchase"
    reference: str | None = None
    description: str | None = None
