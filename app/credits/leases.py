"""Credit leases: holds granted in memory, from credit reserved for many requests at once.

An instance that serves an account often reserves a slice of its available credit as one hold
row (a lease, `holds.lease`) and grants its requests' holds from that slice without a round
trip. Each request's settlement takes its part out of the lease in the settlement's one commit
(app/credits/repository.py), so the account's `held` is always the sum of its hold rows, and
the sum of the holds granted from a lease never exceeds what the lease reserved: SPEC 7's bound
is kept whatever the other instances do. A lease is renewed, expires and is swept as any hold,
so a dead instance's lease comes back after the hold lease time.

What a lease does not decide, the per-request hold does, exactly as without leases:
- requests of a key with a spend limit, or with a `user` when the account limits end users;
- a request the lease's free part cannot cover (its refusal, a 402, is the database's);
- every request after the account's terms change (suspension, a limit, a purchase that may
  change the tier): a trigger notifies every instance, which stops granting from its lease.

This module is the book of this process's leases (no I/O); `HoldKeeper` runs the statements.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, field
from decimal import Decimal

from app.credits.repository import LeaseTerms

# A lease is sized for this many holds like the one that found the account busy.
LEASE_REQUESTS = 64
# At most this share of the account's available credit goes into one lease, so that other
# instances (and this one's own per-request holds) still find credit while it is out.
LEASE_SHARE = Decimal("0.25")
# An account is leased once it asks this many per-request holds of this process in a second;
# an account that sends fewer is served as without leases (no reserve, no visible `held`).
BUSY_HOLDS_PER_SECOND = 20
# A lease not granted from for this long is given back.
IDLE_SECONDS = 2.0
# A lease no request could use (all of them limited) is not taken again for this long.
COOL_OFF_SECONDS = 60.0


class LeaseState(enum.Enum):
    ACTIVE = "active"  # grants holds
    RETIRING = "retiring"  # grants nothing more; given back once its requests have settled


@dataclass(slots=True)
class Lease:
    account_id: uuid.UUID
    lease_id: uuid.UUID
    amount: Decimal  # what its row reserves, as this process knows it
    target: Decimal  # what it is topped up to
    valid_until: float  # monotonic: its row outlives this (renewed before it)
    terms: LeaseTerms
    in_flight: Decimal = Decimal(0)  # granted to requests not settled yet
    requests: int = 0
    granted: int = 0  # requests served from it, ever
    last_grant: float = 0.0
    state: LeaseState = LeaseState.ACTIVE
    extending: bool = False
    shrunk: bool = False  # retired with requests in flight: its free part went back

    @property
    def free(self) -> Decimal:
        return self.amount - self.in_flight

    def serves(self, api_key_id: uuid.UUID | None, user: str | None) -> bool:
        """A request no spend limit applies to (those are counted per request)."""
        terms = self.terms
        return (api_key_id is None or str(api_key_id) not in terms.limited_keys) and (
            user is None or not terms.user_limited
        )

    def wants_more(self) -> bool:
        return (
            self.state is LeaseState.ACTIVE and not self.extending and self.free * 2 < self.target
        )


@dataclass(slots=True)
class _Busy:
    second: int = 0
    holds: int = 0


@dataclass
class LeaseBook:
    leases: dict[uuid.UUID, Lease] = field(default_factory=dict)  # active, by account
    retiring: dict[uuid.UUID, Lease] = field(default_factory=dict)  # by lease id
    busy: dict[uuid.UUID, _Busy] = field(default_factory=dict)
    cooling: dict[uuid.UUID, float] = field(default_factory=dict)  # account → until

    def grant(
        self,
        account_id: uuid.UUID,
        amount: Decimal,
        api_key_id: uuid.UUID | None,
        user: str | None,
        now: float,
    ) -> Lease | None:
        """The lease that holds `amount` for this request, if one can."""
        lease = self.leases.get(account_id)
        if (
            lease is None
            or now >= lease.valid_until
            or lease.free < amount
            or not lease.serves(api_key_id, user)
        ):
            return None
        lease.in_flight += amount
        lease.requests += 1
        lease.granted += 1
        lease.last_grant = now
        return lease

    def settled(self, lease: Lease, part: Decimal, committed: bool) -> None:
        """A request of the lease settled: its part left the lease's row with the commit. A
        settlement that failed may or may not have committed: the lease is retired, since its
        amount is no longer known."""
        lease.in_flight -= part
        lease.requests -= 1
        if committed:
            lease.amount -= min(part, lease.amount)
        else:
            self.retire_lease(lease)

    def hold_placed(self, account_id: uuid.UUID, now: float) -> bool:
        """A per-request hold was granted; True when the account is now busy enough here to
        be leased."""
        if account_id in self.leases:
            return False
        until = self.cooling.get(account_id)
        if until is not None:
            if now < until:
                return False
            del self.cooling[account_id]
        second = int(now)
        busy = self.busy.get(account_id)
        if busy is None:
            if len(self.busy) > 10_000:
                self.busy.clear()
            busy = self.busy[account_id] = _Busy(second)
        if busy.second != second:
            busy.second, busy.holds = second, 0
        busy.holds += 1
        return busy.holds >= BUSY_HOLDS_PER_SECOND

    def add(self, lease: Lease) -> None:
        self.busy.pop(lease.account_id, None)
        self.leases[lease.account_id] = lease

    def extended(self, lease: Lease, terms: LeaseTerms, valid_until: float) -> None:
        lease.amount += terms.added
        lease.terms = terms
        lease.valid_until = max(lease.valid_until, valid_until)
        if terms.suspended:
            self.retire_lease(lease)

    def retire(self, account_id: uuid.UUID) -> Lease | None:
        """Stop granting from the account's lease (its terms changed, it idles, ...)."""
        lease = self.leases.pop(account_id, None)
        if lease is not None:
            lease.state = LeaseState.RETIRING
            self.retiring[lease.lease_id] = lease
        return lease

    def retire_lease(self, lease: Lease) -> None:
        """Retire this lease, if it is still its account's active one."""
        if self.leases.get(lease.account_id) is lease:
            self.retire(lease.account_id)

    def retire_all(self) -> None:
        for account_id in list(self.leases):
            self.retire(account_id)

    def retire_idle(self, now: float) -> None:
        for lease in list(self.leases.values()):
            if now - lease.last_grant >= IDLE_SECONDS or now >= lease.valid_until:
                if lease.granted == 0:  # every request of it is limited: no use leasing
                    self.cooling[lease.account_id] = now + COOL_OFF_SECONDS
                self.retire(lease.account_id)

    def returnable(self) -> list[Lease]:
        """Retired leases with no request in flight: what they hold can go back."""
        return [lease for lease in self.retiring.values() if lease.requests == 0]

    def shrinkable(self) -> list[Lease]:
        """Retired leases with requests in flight whose free part can go back now."""
        return [
            lease
            for lease in self.retiring.values()
            if lease.requests and not lease.shrunk and not lease.extending and lease.free > 0
        ]

    def returned(self, lease: Lease) -> None:
        self.retiring.pop(lease.lease_id, None)

    def all(self) -> list[Lease]:
        return [*self.leases.values(), *self.retiring.values()]
