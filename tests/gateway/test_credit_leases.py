"""Credit leases (issue 19): holds granted in memory from credit one statement reserved.

Against a real PostgreSQL: the book's arithmetic under random operations, a keeper that leases
a busy account and gives the lease back, two gateway processes draining one account through
leases, a SIGKILLed process's lease swept back, a purchase and a suspension applying from the
next request, and limited keys never served from a lease.
"""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.credits import leases as leases_module
from app.credits import repository
from app.credits.holds import HoldKeeper
from app.credits.leases import Lease, LeaseBook, LeaseState
from app.credits.repository import (
    HoldOutcome,
    LeaseTerms,
    SettlementConnection,
    append_entry,
)
from app.credits.schemas import LedgerKind
from app.db.engine import create_sessionmaker, driver_dsn, unit_of_work
from app.metering.schemas import Settlement
from app.metering.writer import without_lease_part
from tests.conftest import ADMIN_TOKEN, new_account_with_key
from tests.support.process import GatewayProcess
from tests.support.upstream import FakeUpstream

FIXTURE_PRICING = Path(__file__).parents[1] / "fixtures" / "pricing"
HELLO = [{"role": "user", "content": "Say this is a test!"}]
TERMS = LeaseTerms(
    added=Decimal(0),
    available=Decimal(0),
    suspended=False,
    limited_keys=frozenset(),
    user_limited=False,
    total_purchased=Decimal(0),
    total_usage=Decimal(0),
)


async def account_totals(engine: AsyncEngine, account_id: uuid.UUID | str) -> Any:
    async with engine.connect() as connection:
        return (
            await connection.execute(
                text(
                    "SELECT balance, held,"
                    " (SELECT coalesce(sum(amount), 0) FROM ledger_entries l"
                    "   WHERE l.account_id = a.id) AS ledger,"
                    " (SELECT coalesce(sum(amount), 0) FROM holds h"
                    "   WHERE h.account_id = a.id) AS hold_rows,"
                    " (SELECT count(*) FROM holds h WHERE h.account_id = a.id AND h.lease)"
                    "   AS leases,"
                    " (SELECT coalesce(sum(cost), 0) FROM usage_events e"
                    "   WHERE e.account_id = a.id) AS event_cost"
                    " FROM accounts a WHERE id = :id"
                ),
                {"id": str(account_id)},
            )
        ).one()


# ── The book alone ───────────────────────────────────────────────────────────────────────────

_amounts = st.decimals(min_value=Decimal("0.000001"), max_value=Decimal(5), places=6)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("grant"), _amounts),
            st.tuples(st.just("settle"), st.booleans()),
            st.tuples(st.just("extend"), _amounts),
            st.tuples(st.just("retire"), st.none()),
        ),
        max_size=60,
    )
)
def test_a_lease_never_grants_more_than_it_reserved(operations: list[tuple[str, Any]]) -> None:
    """Whatever the order of grants, settlements (committed or failed), top-ups and
    retirements, what is granted and in flight never exceeds what the lease reserves."""
    book = LeaseBook()
    account = uuid.uuid4()
    lease = Lease(account, uuid.uuid4(), Decimal(0), Decimal(10), 1e12, TERMS)
    book.extended(lease, replace(TERMS, added=Decimal(3)), 1e12)
    book.add(lease)
    reserved = lease.amount  # the row's amount, as the database would hold it
    flying: list[Decimal] = []
    for operation, value in operations:
        if operation == "grant":
            granted = book.grant(account, value, None, None, 0.0)
            if granted is not None:
                assert granted is lease and lease.state is LeaseState.ACTIVE
                flying.append(value)
        elif operation == "settle" and flying:
            part = flying.pop(0)
            book.settled(lease, part, committed=value)
            if value:
                reserved -= part
        elif operation == "extend" and lease.state is LeaseState.ACTIVE:
            added = replace(TERMS, added=value)
            book.extended(lease, added, 1e12)
            reserved += value
        elif operation == "retire":
            book.retire(account)
        assert lease.in_flight == sum(flying, Decimal(0))
        assert lease.requests == len(flying)
        assert Decimal(0) <= lease.in_flight <= lease.amount
        # A failed settlement may have committed: the book then believes more is reserved
        # than is, by that part, but it has retired the lease and grants nothing more.
        if lease.state is LeaseState.ACTIVE:
            assert lease.amount == reserved
    assert (lease in book.returnable()) == (lease.state is LeaseState.RETIRING and not flying)


def test_a_lease_serves_no_limited_request_and_nothing_after_its_validity() -> None:
    book = LeaseBook()
    account, limited_key, key = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    terms = replace(TERMS, limited_keys=frozenset({str(limited_key)}), user_limited=True)
    lease = Lease(account, uuid.uuid4(), Decimal(10), Decimal(10), 100.0, terms)
    book.add(lease)
    assert book.grant(account, Decimal(1), limited_key, None, 0.0) is None
    assert book.grant(account, Decimal(1), key, "end-user", 0.0) is None
    assert book.grant(account, Decimal(11), key, None, 0.0) is None  # more than it has
    assert book.grant(account, Decimal(1), key, None, 100.0) is None  # its row may be gone
    assert book.grant(account, Decimal(1), key, None, 99.0) is lease


# ── A keeper against the database ────────────────────────────────────────────────────────────


async def _funded_account(engine: AsyncEngine, balance: str) -> uuid.UUID:
    account_id = uuid.uuid4()
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO accounts (id, name, currency, balance, total_purchased)"
                " VALUES (:id, 'Lease', 'EUR', :balance, :balance)"
            ),
            {"id": account_id, "balance": Decimal(balance)},
        )
        await connection.execute(
            text(
                "INSERT INTO ledger_entries (account_id, id, kind, amount, reference)"
                " VALUES (:id, gen_random_uuid(), 'purchase', :balance, 'seed')"
            ),
            {"id": account_id, "balance": Decimal(balance)},
        )
    return account_id


@pytest.fixture
async def keeper(clean_db: AsyncEngine) -> AsyncIterator[HoldKeeper]:
    """A keeper with leases on, once it listens for changes (it takes no lease before)."""
    keeper = HoldKeeper(clean_db, lease_seconds=30)
    keeper.start()
    try:
        for _ in range(200):
            if keeper.leasing:
                break
            await asyncio.sleep(0.02)
        assert keeper.leasing, "the keeper never listened"
        yield keeper
    finally:
        await keeper.close()  # a second close (after a test's own) does nothing


@pytest.fixture
async def settlements(clean_db: AsyncEngine) -> AsyncIterator[SettlementConnection]:
    connection = SettlementConnection(driver_dsn(clean_db))
    yield connection
    await connection.close()


async def _busy(
    keeper: HoldKeeper, account_id: uuid.UUID, amount: Decimal, n: int
) -> list[HoldOutcome]:
    """`n` holds one after the other, so that the lease statement runs meanwhile."""
    outcomes = []
    for _ in range(n):
        outcomes.append(await keeper.place(account_id, amount))
        await asyncio.sleep(0.001)
    return outcomes


async def _settle(
    connection: SettlementConnection,
    keeper: HoldKeeper,
    account_id: uuid.UUID,
    outcomes: list[HoldOutcome],
    amount: Decimal,
) -> None:
    """Each hold's settlement, without an event, as the proxy hands it over."""
    for outcome in outcomes:
        part = amount if outcome.lease is not None else None
        await connection.settle([Settlement(account_id, outcome.hold_id, None, part)])
        keeper.settled(outcome.hold_id, outcome.lease, amount, committed=True)


async def test_a_busy_account_is_leased_settled_through_the_lease_and_given_back(
    clean_db: AsyncEngine, keeper: HoldKeeper, settlements: SettlementConnection
) -> None:
    account_id = await _funded_account(clean_db, "100")
    amount = Decimal("0.01")
    outcomes = await _busy(keeper, account_id, amount, leases_module.BUSY_HOLDS_PER_SECOND + 40)
    leased = [o for o in outcomes if o.lease is not None]
    assert leased, "a busy account is served from a lease"
    lease = leased[0].lease
    assert lease is not None
    during = await account_totals(clean_db, account_id)
    # The lease is one hold row, and `held` is the sum of the rows, as always.
    assert during.leases == 1 and during.held == during.hold_rows
    assert during.held <= Decimal(100) * leases_module.LEASE_SHARE + amount * len(outcomes)
    await _settle(settlements, keeper, account_id, outcomes, amount)
    after = await account_totals(clean_db, account_id)
    assert after.held == after.hold_rows == lease.amount > 0  # its free part, still out
    assert lease.in_flight == 0
    await keeper.close()  # gives the lease back
    final = await account_totals(clean_db, account_id)
    assert final.held == final.hold_rows == 0 and final.balance == final.ledger == 100


async def test_an_extension_never_brings_back_a_lease_that_is_gone(
    clean_db: AsyncEngine,
) -> None:
    """A lease given back (or swept) while its owner's top-up was on its way: the top-up adds
    nothing, and no row nobody renews is made."""
    account_id = await _funded_account(clean_db, "40")
    lease_id = uuid.uuid4()
    driver = await asyncpg.connect(driver_dsn(clean_db))
    try:
        options = {"share": leases_module.LEASE_SHARE, "lease_seconds": 30.0}
        taken = await repository.extend_lease(
            driver, account_id, lease_id, Decimal(20), new=True, **options
        )
        assert taken is not None and taken.added == Decimal(10)  # a quarter of 40
        grown = await repository.extend_lease(
            driver, account_id, lease_id, Decimal(4), new=False, **options
        )
        assert grown is not None and grown.added == Decimal("4")
        during = await account_totals(clean_db, account_id)
        assert during.held == during.hold_rows == 14 and during.leases == 1
        assert await repository.return_lease(driver, account_id, lease_id) == 14
        late = await repository.extend_lease(
            driver, account_id, lease_id, Decimal(4), new=False, **options
        )
        assert late is None
    finally:
        await driver.close()
    after = await account_totals(clean_db, account_id)
    assert after.held == after.hold_rows == 0 and after.leases == 0


async def test_credit_taken_away_retires_the_lease(
    clean_db: AsyncEngine, keeper: HoldKeeper
) -> None:
    """A negative adjustment is heard like a change of terms: no hold is granted from the
    lease after it (an operator's −100 on a 100 balance leaves nothing to lease from)."""
    account_id = await _funded_account(clean_db, "100")
    await _busy(keeper, account_id, Decimal("0.01"), leases_module.BUSY_HOLDS_PER_SECOND + 20)
    assert account_id in keeper.leases.leases
    async with unit_of_work(create_sessionmaker(clean_db)) as session:
        await append_entry(
            session,
            account_id=account_id,
            kind=LedgerKind.ADJUSTMENT,
            amount=Decimal("-100"),
            reference="correction",
        )
    for _ in range(100):
        if account_id not in keeper.leases.leases:
            break
        await asyncio.sleep(0.01)
    assert account_id not in keeper.leases.leases
    refused = await keeper.place(account_id, Decimal("0.01"))
    assert not refused.granted and refused.lease is None


def test_a_retried_settlement_takes_no_lease_part_again() -> None:
    """The writer's retry of a batch that may have committed carries no lease part (taken
    twice, it would shrink the lease twice)."""
    lease = Settlement(uuid.uuid4(), uuid.uuid4(), None, Decimal("0.5"))
    plain = Settlement(uuid.uuid4(), uuid.uuid4(), None)
    assert without_lease_part(lease) == Settlement(lease.account_id, None, None, None)
    assert without_lease_part(plain) is plain


async def test_a_retired_lease_gives_back_its_free_part_while_requests_run(
    clean_db: AsyncEngine, keeper: HoldKeeper, settlements: SettlementConnection
) -> None:
    account_id = await _funded_account(clean_db, "100")
    amount = Decimal("0.01")
    outcomes = await _busy(keeper, account_id, amount, leases_module.BUSY_HOLDS_PER_SECOND + 20)
    running = [o for o in outcomes if o.lease is not None]  # in flight, not settled
    assert running
    lease = running[0].lease
    assert lease is not None and lease.free > 0
    keeper.leases.retire(account_id)  # as a notice would
    await keeper._return_leases()
    during = await account_totals(clean_db, account_id)
    placed = [o for o in outcomes if o.lease is None]
    # What is left of the lease is exactly what its requests in flight hold.
    assert during.held == during.hold_rows == amount * (len(running) + len(placed))
    await _settle(settlements, keeper, account_id, outcomes, amount)
    await keeper._return_leases()
    after = await account_totals(clean_db, account_id)
    assert after.held == after.hold_rows == 0 and after.leases == 0


async def test_an_idle_lease_goes_back_by_itself(
    clean_db: AsyncEngine, keeper: HoldKeeper, settlements: SettlementConnection
) -> None:
    account_id = await _funded_account(clean_db, "50")
    amount = Decimal("0.02")
    for _ in range(leases_module.BUSY_HOLDS_PER_SECOND + 10):
        outcome = await keeper.place(account_id, amount)
        await _settle(settlements, keeper, account_id, [outcome], amount)
    assert (await account_totals(clean_db, account_id)).leases == 1
    deadline = time.monotonic() + leases_module.IDLE_SECONDS + 5
    while time.monotonic() < deadline:
        totals = await account_totals(clean_db, account_id)
        if totals.leases == 0:
            break
        await asyncio.sleep(0.1)
    assert totals.leases == 0 and totals.held == 0


# ── Gateway processes ─────────────────────────────────────────────────────────────────────────


BUSY_TIERS = """basis = "purchased"
[[tier]]
name = "busy"
min_total = "0"
rpm = 1_000_000
tpm = 1_000_000_000
"""


@pytest.fixture(scope="module")
def pricing(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture's rate tables, with a tier that never rate-limits these tests' traffic."""
    folder = tmp_path_factory.mktemp("lease-pricing")
    shutil.copy(FIXTURE_PRICING / "test-2025-01-01.toml", folder)
    (folder / "tiers.toml").write_text(BUSY_TIERS)
    return folder


@pytest.fixture
def lease_env(database_url: str, upstream: FakeUpstream, pricing: Path) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "TOLLGATE_ADMIN_TOKEN": ADMIN_TOKEN,
        "UPSTREAM_BASE_URL": upstream.url,
        "UPSTREAM_API_KEY": "upstream-secret",
        "TOLLGATE_PRICING_DIR": str(pricing),
        "TOLLGATE_SCHEDULER": "false",
        "TOLLGATE_NOTIFICATIONS": "false",
    }


async def _chat(client: httpx.AsyncClient, url: str, key: str, **extra: Any) -> httpx.Response:
    body = {"model": "llama-3.1-8b", "messages": HELLO, "max_tokens": 50, **extra}
    return await client.post(
        f"{url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
    )


async def _lease_count(engine: AsyncEngine, account_id: str) -> int:
    return int((await account_totals(engine, account_id)).leases)


async def _warm(
    client: httpx.AsyncClient, url: str, key: str, engine: AsyncEngine, account: str
) -> None:
    """Requests until the process serves the account from a lease."""
    for _ in range(400):
        response = await _chat(client, url, key)
        assert response.status_code == 200, response.text
        if await _lease_count(engine, account):
            return
    raise AssertionError("the busy account was never leased")


async def test_two_processes_draining_one_account_through_leases_never_overdraw(
    lease_env: dict[str, str], admin: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    processes = [GatewayProcess(lease_env).start(), GatewayProcess(lease_env).start()]
    try:
        account, key = await new_account_with_key(admin, credit="0.003")
        statuses: list[int] = []
        async with httpx.AsyncClient(timeout=30) as client:

            async def drain(url: str) -> None:
                while True:
                    response = await _chat(client, url, key)
                    statuses.append(response.status_code)
                    if response.status_code == 402:
                        return
                    assert response.status_code == 200, response.text

            await asyncio.gather(*(drain(p.url) for p in processes for _ in range(8)))
        assert statuses.count(200) > 2 * leases_module.BUSY_HOLDS_PER_SECOND
        during = await account_totals(clean_db, account["id"])
        # The fake upstream never bills more than a hold covers: no overdraft at all.
        assert during.balance >= 0 and during.balance == during.ledger
        assert during.ledger == Decimal("0.003") - during.event_cost
        assert during.held == during.hold_rows
    finally:
        for process in processes:
            process.stop()  # each gives its leases back on the way out
    final = await account_totals(clean_db, account["id"])
    assert final.held == final.hold_rows == 0 and final.balance == final.ledger >= 0


async def test_a_killed_process_lease_comes_back(
    lease_env: dict[str, str], admin: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    env = {**lease_env, "TOLLGATE_HOLD_LEASE_SECONDS": "1"}
    victim = GatewayProcess(env).start()
    account, key = await new_account_with_key(admin, credit="10.00")
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            await _warm(client, victim.url, key, clean_db, account["id"])
        victim.kill()
        held = await account_totals(clean_db, account["id"])
        assert held.leases == 1 and held.held > 0  # nobody gives it back now
        survivor = GatewayProcess(env).start()  # its keeper sweeps what expired
        try:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                totals = await account_totals(clean_db, account["id"])
                if totals.held == 0:
                    break
                await asyncio.sleep(0.2)
            assert totals.held == totals.hold_rows == 0 and totals.leases == 0
            assert totals.balance == totals.ledger
        finally:
            survivor.stop()
    finally:
        victim.stop()


async def test_a_purchase_and_a_suspension_apply_from_the_next_request(
    lease_env: dict[str, str], admin: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    gateway = GatewayProcess(lease_env).start()
    try:
        account, key = await new_account_with_key(admin, credit="0.02")
        async with httpx.AsyncClient(timeout=30) as client:
            await _warm(client, gateway.url, key, clean_db, account["id"])
            # More than the account has: refused, lease or not.
            big = {"max_tokens": 131_000}  # €0.0262 of output
            assert (await _chat(client, gateway.url, key, **big)).status_code == 402
            response = await admin.post(
                f"/admin/accounts/{account['id']}/credits",
                json={"amount": "50.00", "kind": "purchase"},
            )
            assert response.status_code == 201
            response = await _chat(client, gateway.url, key, **big)
            assert response.status_code == 200, response.text  # at once
            await _warm(client, gateway.url, key, clean_db, account["id"])
            response = await admin.post(f"/admin/accounts/{account['id']}/suspend", json={})
            assert response.status_code == 200
            response = await _chat(client, gateway.url, key)
            assert response.status_code == 403, response.text
            assert response.json()["error"]["code"] == "account_suspended"
    finally:
        gateway.stop()
    final = await account_totals(clean_db, account["id"])
    assert final.held == final.hold_rows == 0 and final.balance == final.ledger


async def test_a_limited_key_is_never_served_from_the_lease(
    lease_env: dict[str, str], admin: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    gateway = GatewayProcess(lease_env).start()
    try:
        account, free_key = await new_account_with_key(admin, credit="10.00")
        response = await admin.post(
            f"/admin/accounts/{account['id']}/keys",
            json={"spend_limit": {"amount": "0.0002", "period": "total"}},
        )
        assert response.status_code == 201, response.text
        limited_key, limited_id = response.json()["key"], response.json()["id"]
        async with httpx.AsyncClient(timeout=30) as client:
            await _warm(client, gateway.url, free_key, clean_db, account["id"])
            statuses = [
                (await _chat(client, gateway.url, limited_key)).status_code for _ in range(100)
            ]
        async with clean_db.connect() as connection:
            spent, leased = (
                await connection.execute(
                    text(
                        "SELECT coalesce(sum(cost), 0),"
                        " (SELECT count(*) FROM holds WHERE account_id = :a AND lease)"
                        " FROM usage_events WHERE account_id = :a AND api_key_id = :k"
                    ),
                    {"a": account["id"], "k": limited_id},
                )
            ).one()
        assert 402 in statuses, (statuses, spent)  # its limit, although the lease had credit
        assert spent <= Decimal("0.0002") and leased == 1  # the free key's lease, still out
    finally:
        gateway.stop()
