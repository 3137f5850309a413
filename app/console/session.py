"""Who is signed in to the console: the session's operator, read on every request (so a
disabled operator or a changed role applies at once), and the permission check every action
makes on the server, whatever the page showed."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from litestar import Request
from litestar.datastructures import State

from app.audit.service import Actor
from app.console.schemas import OperatorRole, Permission
from app.db.engine import unit_of_work
from app.db.models import Operator
from app.errors import PermissionDenied

HOME = "/console"
LOGIN = "/console/login"
SESSION_OPERATOR, SESSION_SINCE = "o", "t"


@dataclass(frozen=True, slots=True)
class Staff:
    id: uuid.UUID
    email: str
    role: OperatorRole
    client: str | None

    def may(self, permission: Permission) -> bool:
        return self.role.may(permission)

    def require(self, permission: Permission) -> None:
        if not self.may(permission):
            raise PermissionDenied(
                f"Your role ({self.role}) may not do this; it needs {permission} rights."
            )

    @property
    def actor(self) -> Actor:
        return Actor(self.email, self.client)


class SignInRequired(Exception):
    pass


async def provide_staff(request: Request[Any, Any, Any], state: State) -> Staff:
    from app.console.security import SESSION_HOURS

    try:
        operator_id = uuid.UUID(request.session[SESSION_OPERATOR])
        since = float(request.session[SESSION_SINCE])
    except (KeyError, TypeError, ValueError):
        raise SignInRequired from None
    if time.time() - since > SESSION_HOURS * 3600:
        request.set_session({})
        raise SignInRequired
    async with unit_of_work(state.sessionmaker) as db:
        operator = await db.get(Operator, operator_id)
    if operator is None or operator.disabled_at is not None or operator.password_hash is None:
        request.set_session({})
        raise SignInRequired
    client = request.client.host if request.client else None
    return Staff(operator.id, operator.email, OperatorRole(operator.role), client)
