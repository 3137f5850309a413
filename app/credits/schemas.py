"""The kinds of money movement and how each moves an account's running totals."""

from __future__ import annotations

from enum import StrEnum


class LedgerKind(StrEnum):
    """A ledger entry's kind (SPEC 7). Positive amounts credit the balance, negative debit it."""

    PURCHASE = "purchase"  # paid credit: counts toward the tier
    GRANT = "grant"  # free credit: does not
    USAGE = "usage"  # a usage event's cost (negative)
    REFUND = "refund"  # a refund or dispute of a purchase (negative): lowers total purchased
    ADJUSTMENT = "adjustment"  # an operator's correction

    @property
    def moves_total_purchased(self) -> bool:
        return self in (LedgerKind.PURCHASE, LedgerKind.REFUND)

    @property
    def moves_total_usage(self) -> bool:
        return self is LedgerKind.USAGE


# Kinds that the admin API and the CLI may credit by hand.
CREDIT_KINDS = (LedgerKind.PURCHASE, LedgerKind.GRANT)
