"""Operator roles and what each may do (SPEC 12)."""

from __future__ import annotations

from enum import StrEnum


class Permission(StrEnum):
    READ = "read"  # every page
    CREDIT = "credit"  # grant or adjust credit, with a reason
    INVOICES = "invoices"  # run a period's invoices
    SUSPEND = "suspend"  # suspend and unsuspend accounts
    KEYS = "keys"  # revoke keys, set their limits
    WEBHOOKS = "webhooks"  # manage webhook endpoints, retry deliveries
    OPERATORS = "operators"  # create and disable operators


class OperatorRole(StrEnum):
    VIEWER = "viewer"
    BILLING = "billing"
    ADMIN = "admin"

    def may(self, permission: Permission) -> bool:
        return permission in _ALLOWED[self]


_BILLING = {Permission.READ, Permission.CREDIT, Permission.INVOICES, Permission.SUSPEND}
_ALLOWED: dict[OperatorRole, set[Permission]] = {
    OperatorRole.VIEWER: {Permission.READ},
    OperatorRole.BILLING: _BILLING,
    OperatorRole.ADMIN: set(Permission),
}
