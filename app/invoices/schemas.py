"""Request bodies of the invoice API."""

from __future__ import annotations

import msgspec


class RunInvoices(msgspec.Struct, forbid_unknown_fields=True):
    period: str  # "YYYY-MM"
