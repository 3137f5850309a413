"""Spend controls (SPEC 3.6): limits per key and per end user enforced by the credit hold,
model allow-lists, expiry, suspension, `GET /v1/key`, and the audit log of their changes."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import httpx
import msgspec
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.credits.limits import LimitPeriod, calendar_period
from tests.conftest import ADMIN_TOKEN, new_account_with_key
from tests.gateway.conftest import FIXTURE_PRICING, events, totals
from tests.support.live import LiveServer
from tests.support.process import GatewayProcess
from tests.support.upstream import FakeUpstream

HELLO = [{"role": "user", "content": "Say this is a test!"}]
_HOLD = re.compile(r"may cost up to ([0-9.]+)")


def _sdk(proxy: LiveServer, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key=key, max_retries=0)


async def _key(
    admin: httpx.AsyncClient, account_id: str, **fields: Any
) -> tuple[dict[str, Any], str]:
    response = await admin.post(f"/admin/accounts/{account_id}/keys", json=fields)
    assert response.status_code == 201, response.text
    created = response.json()
    return created, created["key"]


async def _chat(client: httpx.AsyncClient, url: str, key: str, **extra: Any) -> httpx.Response:
    body = {"model": "deepseek-r1-70b", "messages": HELLO, "max_tokens": 200, **extra}
    return await client.post(
        f"{url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
    )


async def _hold_of(client: httpx.AsyncClient, url: str, admin: httpx.AsyncClient) -> Decimal:
    """The hold of `_chat`'s request, from the 402 of a key whose limit is zero."""
    account, _ = await new_account_with_key(admin, name="probe", credit="10.00")
    _, zero = await _key(admin, account["id"], spend_limit={"amount": "0", "period": "total"})
    refused = await _chat(client, url, zero)
    assert refused.status_code == 402, refused.text
    match = _HOLD.search(refused.json()["error"]["message"])
    assert match is not None
    return Decimal(match.group(1))


async def _counters(engine: AsyncEngine, account_id: str) -> dict[str, Any]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            text("SELECT * FROM spend_counters WHERE account_id = :id"), {"id": account_id}
        )
        return {row.subject: row for row in rows}


async def _mismatches(engine: AsyncEngine) -> list[Any]:
    from app.credits.repository import counter_mismatches
    from app.db.engine import create_sessionmaker

    async with create_sessionmaker(engine)() as session:
        return await counter_mismatches(session)


async def test_a_daily_key_limit_stops_at_exactly_the_request_whose_hold_would_pass_it(
    proxy: LiveServer, admin: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        hold = await _hold_of(client, proxy.url, admin)
        account, _ = await new_account_with_key(admin, credit="10.00")
        # One request to learn the actual cost of this body (the echo upstream is exact).
        _, probe = await _key(admin, account["id"])
        first = await _chat(client, proxy.url, probe)
        cost = Decimal(first.headers["x-tollgate-cost"])
        assert Decimal(0) < cost < hold
        # Room for four requests' spend plus one more hold: the fifth passes, the sixth not.
        zone = "Pacific/Kiritimati"  # UTC+14: its day is not UTC's
        limit = 4 * cost + hold
        created, key = await _key(
            admin,
            account["id"],
            spend_limit={"amount": str(limit), "period": "day", "timezone": zone},
        )
        statuses = [(await _chat(client, proxy.url, key)).status_code for _ in range(5)]
        assert statuses == [200] * 5
        refused = await _chat(client, proxy.url, key)
    assert refused.status_code == 402
    error = refused.json()["error"]
    assert error["code"] == "key_limit_exceeded" and error["type"] == "insufficient_quota"
    _, end = calendar_period(LimitPeriod.DAY, ZoneInfo(zone), datetime.now(UTC))
    assert end is not None and end.astimezone(ZoneInfo(zone)).hour == 0
    retry_after = int(refused.headers["retry-after"])
    assert abs(retry_after - (end - datetime.now(UTC)).total_seconds()) < 5
    assert refused.headers["x-should-retry"] == "false"
    # Nothing was held or charged for the refused request; the other key is unaffected.
    after = await totals(clean_db, account["id"])
    assert after.held == 0 and after.holds == 0
    assert len(await events(clean_db, account["id"])) == 6
    async with httpx.AsyncClient(timeout=30) as client:
        assert (await _chat(client, proxy.url, probe)).status_code == 200
    counter = (await _counters(clean_db, account["id"]))[f"key:{created['id']}"]
    assert counter.spent == 5 * cost and counter.held == 0
    start, _ = calendar_period(LimitPeriod.DAY, ZoneInfo(zone), datetime.now(UTC))
    assert counter.period_start == start
    assert await _mismatches(clean_db) == []


@pytest.fixture
def two_processes(
    database_url: str, upstream: FakeUpstream, clean_db: AsyncEngine
) -> Iterator[list[GatewayProcess]]:
    env = {
        "DATABASE_URL": database_url,
        "TOLLGATE_ADMIN_TOKEN": ADMIN_TOKEN,
        "UPSTREAM_BASE_URL": upstream.url,
        "UPSTREAM_API_KEY": "upstream-secret",
        "TOLLGATE_PRICING_DIR": str(FIXTURE_PRICING),
    }
    processes = [GatewayProcess(env).start(), GatewayProcess(env).start()]
    yield processes
    for process in processes:
        process.stop()


async def test_thirty_parallel_requests_on_two_processes_never_pass_a_key_or_user_limit(
    two_processes: list[GatewayProcess],
    proxy: LiveServer,
    admin: httpx.AsyncClient,
    clean_db: AsyncEngine,
) -> None:
    urls = [p.url for p in two_processes]
    async with httpx.AsyncClient(timeout=60) as client:
        hold = await _hold_of(client, urls[0], admin)
        account, _ = await new_account_with_key(admin, credit="10.00")
        # The key's limit covers ~7 holds; the end user's (a separate account-wide limit) ~4.
        key_limit = hold * 7 + hold / 2
        created, key = await _key(
            admin, account["id"], spend_limit={"amount": str(key_limit), "period": "month"}
        )
        user_limit = hold * 4 + hold / 2
        patched = await admin.patch(
            f"/admin/accounts/{account['id']}",
            json={"user_spend_limit": {"amount": str(user_limit), "period": "week"}},
        )
        assert patched.status_code == 200, patched.text
        slow = {"metadata": {"test_behaviour": "slow-first-byte:1"}}
        # Thirty at once: twenty for one end user (the user limit binds), ten without a user
        # (only the key limit binds).
        responses = await asyncio.gather(
            *(
                _chat(client, urls[i % 2], key, **slow, **({"user": "alice"} if i < 20 else {}))
                for i in range(30)
            )
        )
    statuses = [r.status_code for r in responses]
    codes = [r.json()["error"]["code"] for r in responses if r.status_code != 200]
    assert set(codes) <= {"key_limit_exceeded", "user_limit_exceeded"}, codes
    found = await events(clean_db, account["id"])
    key_events = [e for e in found if str(e.api_key_id) == created["id"]]
    alice = [e for e in key_events if e.user == "alice"]
    # No cost exceeded its hold here, so SPEC 7's bound is zero: never past either limit.
    assert all(e.cost <= hold for e in found)
    assert sum(e.cost for e in key_events) <= key_limit
    assert sum(e.cost for e in alice) <= user_limit
    # Holds are conservative while requests are in flight: each limit let through at least
    # the requests whose holds fit it side by side.
    assert len(alice) >= 4 and len(key_events) >= 7
    assert statuses.count(200) == len(key_events)
    after = await totals(clean_db, account["id"])
    assert after.balance == after.ledger == Decimal("10.00") - sum(e.cost for e in found)
    assert after.held == 0 and after.holds == 0
    counters = await _counters(clean_db, account["id"])
    assert counters[f"key:{created['id']}"].spent == sum(e.cost for e in key_events)
    assert counters["user:alice"].spent == sum(e.cost for e in alice)
    assert all(c.held == 0 for c in counters.values())
    assert await _mismatches(clean_db) == []


async def test_a_request_across_a_period_boundary_is_charged_to_the_period_it_started_in(
    clean_db: AsyncEngine,
) -> None:
    """At the statements' level, with instants on either side of a boundary: a hold at 23:59:59
    then one at 00:00:01 (the counter moves to the new day), then the first request settles."""
    from app.credits import repository
    from app.credits.holds import HoldKeeper
    from app.credits.limits import SpendLimit
    from app.credits.service import set_key_limit
    from app.db.engine import create_sessionmaker, unit_of_work
    from app.db.models import Account, ApiKey
    from tests.support.events import usage_event

    sessionmaker = create_sessionmaker(clean_db)
    account_id, key_id = uuid.uuid4(), uuid.uuid4()
    async with unit_of_work(sessionmaker) as session:
        session.add(Account(id=account_id, name="night", balance=Decimal(10)))
        await session.flush()
        session.add(
            ApiKey(id=key_id, account_id=account_id, key_hash=key_id.bytes * 2, prefix="tg-x")
        )
        await session.flush()
        account = await repository.lock_account(session, account_id)
        assert account is not None
        limit = SpendLimit(Decimal("1.00"), LimitPeriod.DAY, "UTC")
        await set_key_limit(session, account, key_id, limit)
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    before, after = midnight - timedelta(seconds=1), midnight + timedelta(seconds=1)
    keeper = HoldKeeper(clean_db)
    try:
        late = await keeper.place(account_id, Decimal("0.40"), at=before, api_key_id=key_id)
        early = await keeper.place(account_id, Decimal("0.40"), at=after, api_key_id=key_id)
        assert late.granted and early.granted
        subject = f"key:{key_id}"
        counter = (await _counters(clean_db, str(account_id)))[subject]
        assert counter.period_start == midnight and counter.spent == 0
        assert counter.held == Decimal("0.80")  # holds in flight count whatever their period
        event = msgspec.structs.replace(
            usage_event(account_id, "0.30", time=before), api_key_id=key_id
        )
        async with unit_of_work(sessionmaker) as session:
            await repository.settle(session, [event], [(account_id, late.hold_id)])
        counter = (await _counters(clean_db, str(account_id)))[subject]
        # Charged to yesterday (the ledger has it), not to today's counter.
        assert counter.period_start == midnight and counter.spent == 0
        assert counter.held == Decimal("0.40")
        event = msgspec.structs.replace(
            usage_event(account_id, "0.25", time=after), api_key_id=key_id
        )
        async with unit_of_work(sessionmaker) as session:
            await repository.settle(session, [event], [(account_id, early.hold_id)])
        counter = (await _counters(clean_db, str(account_id)))[subject]
        assert counter.spent == Decimal("0.25") and counter.held == 0
        assert (await totals(clean_db, str(account_id))).balance == Decimal("9.45")
        assert await _mismatches(clean_db) == []
    finally:
        await keeper.close()


async def test_allowed_models_with_a_base_name_allow_its_suffixes_and_nothing_else(
    proxy: LiveServer, admin: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    account, _ = await new_account_with_key(admin, credit="10.00")
    created, key = await _key(admin, account["id"], allowed_models=["Llama-3-3-70b"])
    assert created["allowed_models"] == ["llama-3.3-70b"]  # canonical names
    sdk = _sdk(proxy, key)
    for model in ("llama-3.3-70b", "llama-3.3-70b-online", "llama-3-3-70b-deep"):
        reply = await sdk.chat.completions.create(model=model, messages=HELLO, max_tokens=5)  # type: ignore[arg-type]
        assert reply.choices
    for model in ("llama-3.1-8b", "deepseek-r1-70b-online"):
        with pytest.raises(openai.PermissionDeniedError) as refused:
            await sdk.chat.completions.create(model=model, messages=HELLO, max_tokens=5)  # type: ignore[arg-type]
        assert refused.value.code == "model_not_allowed"
    # An unknown name is still a 404, before the allow-list is asked.
    with pytest.raises(openai.NotFoundError):
        await sdk.chat.completions.create(model="gpt-9", messages=HELLO, max_tokens=5)  # type: ignore[arg-type]
    # Only the variant: the base itself is not allowed.
    _, online_only = await _key(admin, account["id"], allowed_models=["llama-3.3-70b-online"])
    with pytest.raises(openai.PermissionDeniedError):
        await _sdk(proxy, online_only).chat.completions.create(
            model="llama-3.3-70b",
            messages=HELLO,
            max_tokens=5,  # type: ignore[arg-type]
        )
    assert len(await events(clean_db, account["id"])) == 3  # refused ones: nothing held or sent
    bad = await admin.post(f"/admin/accounts/{account['id']}/keys", json={"allowed_models": ["x"]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "allowed_models"


async def test_an_expired_key_is_refused_within_a_second_and_says_so(
    proxy: LiveServer, admin: httpx.AsyncClient
) -> None:
    account, _ = await new_account_with_key(admin, credit="10.00")
    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=2)
    _, key = await _key(admin, account["id"], expires_at=expires.strftime("%Y-%m-%dT%H:%M:%SZ"))
    sdk = _sdk(proxy, key)
    await sdk.chat.completions.create(model="llama-3.1-8b", messages=HELLO, max_tokens=5)  # type: ignore[arg-type]
    await asyncio.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.05)
    with pytest.raises(openai.AuthenticationError) as refused:
        await sdk.chat.completions.create(model="llama-3.1-8b", messages=HELLO, max_tokens=5)  # type: ignore[arg-type]
    assert refused.value.code == "invalid_api_key"
    assert "expired" in refused.value.message


async def test_per_user_limits_are_independent_per_user(
    proxy: LiveServer, admin: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        hold = await _hold_of(client, proxy.url, admin)
        account, key = await new_account_with_key(admin, credit="10.00")
        limit = hold  # one request each (its hold fits), not two (spend + a hold does not)
        patched = await admin.patch(
            f"/admin/accounts/{account['id']}",
            json={"user_spend_limit": {"amount": str(limit), "period": "day"}},
        )
        assert patched.json()["user_spend_limit"]["period"] == "day"
        statuses = {}
        for user in ("alice", "bob", "alice", "bob", "carol"):
            response = await _chat(client, proxy.url, key, user=user)
            statuses.setdefault(user, []).append(response.status_code)
            if response.status_code == 402:
                assert response.json()["error"]["code"] == "user_limit_exceeded"
                assert "retry-after" in response.headers
        # No `user`: the per-user limit does not apply.
        plain = [(await _chat(client, proxy.url, key)).status_code for _ in range(3)]
    assert statuses == {"alice": [200, 402], "bob": [200, 402], "carol": [200]}
    assert plain == [200, 200, 200]
    # Raising the limit applies on the next request.
    await admin.patch(
        f"/admin/accounts/{account['id']}",
        json={"user_spend_limit": {"amount": str(limit * 3), "period": "day"}},
    )
    async with httpx.AsyncClient(timeout=30) as client:
        assert (await _chat(client, proxy.url, key, user="alice")).status_code == 200
    assert await _mismatches(clean_db) == []


async def test_patch_to_raise_a_key_limit_applies_on_the_next_request(
    proxy: LiveServer, admin: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    account, _ = await new_account_with_key(admin, credit="10.00")
    created, key = await _key(admin, account["id"], spend_limit={"amount": "0", "period": "week"})
    async with httpx.AsyncClient(timeout=30) as client:
        assert (await _chat(client, proxy.url, key)).status_code == 402
        patched = await admin.patch(
            f"/admin/keys/{created['id']}",
            json={"spend_limit": {"amount": "5.00", "period": "week", "timezone": "Asia/Tokyo"}},
        )
        assert patched.status_code == 200, patched.text
        assert patched.json()["spend_limit"] == {
            "amount": "5.00",
            "period": "week",
            "timezone": "Asia/Tokyo",
        }
        assert (await _chat(client, proxy.url, key)).status_code == 200
        # Removing it: no limit at all.
        await admin.patch(f"/admin/keys/{created['id']}", json={"spend_limit": None})
        assert (await _chat(client, proxy.url, key)).status_code == 200
    assert await _counters(clean_db, account["id"]) == {}
    log = (await admin.get("/admin/audit-log", params={"action": "key.updated"})).json()["data"]
    assert [e["object_id"] for e in log] == [created["id"], created["id"]]
    assert log[1]["before"]["spend_limit"]["amount"] == "0.00"
    assert log[1]["after"]["spend_limit"]["amount"] == "5.00"
    assert log[0]["actor"] == "admin-token" and log[0]["client_address"] == "127.0.0.1"


async def test_get_key_equals_the_sum_of_the_keys_events(
    proxy: LiveServer, admin: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    account, _ = await new_account_with_key(admin, credit="10.00")
    created, key = await _key(
        admin,
        account["id"],
        name="ci",
        scope="inference",
        spend_limit={"amount": "2.50", "period": "day", "timezone": "America/New_York"},
    )
    async with httpx.AsyncClient(timeout=30) as client:
        for _ in range(3):
            assert (await _chat(client, proxy.url, key)).status_code == 200
        # Usage ingested for the key months back counts in its total only.
        old = datetime.now(UTC) - timedelta(days=70)
        ingested = await admin.post(
            "/admin/events",
            json={
                "events": [
                    {
                        "id": "old-1",
                        "account_id": account["id"],
                        "api_key_id": created["id"],
                        "time": old.strftime("%Y-%m-%dT%H:%M:%SZ"),
                        "model": "llama-3.1-8b",
                        "endpoint": "/v1/chat/completions",
                        "prompt_tokens": 1_000_000,
                        "completion_tokens": 0,
                    }
                ]
            },
        )
        assert ingested.status_code == 200, ingested.text
        shown = (
            await client.get(f"{proxy.url}/v1/key", headers={"Authorization": f"Bearer {key}"})
        ).json()["data"]
    found = [e for e in await events(clean_db, account["id"]) if str(e.api_key_id) == created["id"]]
    recent = sum(e.cost for e in found if e.time > old + timedelta(days=1))
    assert Decimal(shown["usage"]["day"]) == recent
    assert Decimal(shown["usage"]["month"]) == recent
    assert Decimal(shown["usage"]["total"]) == sum(e.cost for e in found)
    assert Decimal(shown["usage"]["total"]) == recent + Decimal("0.20")
    assert Decimal(shown["limit_remaining"]) == Decimal("2.50") - recent
    assert shown["scope"] == "inference" and shown["name"] == "ci"
    assert shown["spend_limit"]["timezone"] == "America/New_York"
    _, end = calendar_period(LimitPeriod.DAY, ZoneInfo("America/New_York"), datetime.now(UTC))
    assert shown["limit_resets_at"] == end.strftime("%Y-%m-%dT%H:%M:%SZ")  # type: ignore[union-attr]
    assert "key" not in shown and "key_hash" not in shown


async def test_a_suspended_account_gets_403_until_unsuspended(
    proxy: LiveServer, admin: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    account, key = await new_account_with_key(admin, credit="10.00")
    sdk = _sdk(proxy, key)
    suspended = await admin.post(
        f"/admin/accounts/{account['id']}/suspend", json={"reason": "chargeback"}
    )
    assert suspended.status_code == 200 and suspended.json()["suspended"] is True
    with pytest.raises(openai.PermissionDeniedError) as refused:
        await sdk.chat.completions.create(model="llama-3.1-8b", messages=HELLO, max_tokens=5)  # type: ignore[arg-type]
    assert refused.value.code == "account_suspended"
    # Nothing else about it changes: it can still read its account.
    async with httpx.AsyncClient(base_url=proxy.url) as client:
        mine = await client.get("/v1/account", headers={"Authorization": f"Bearer {key}"})
    assert mine.status_code == 200 and mine.json()["balance"] == "10.00"
    assert (await totals(clean_db, account["id"])).holds == 0
    await admin.post(f"/admin/accounts/{account['id']}/unsuspend")
    await sdk.chat.completions.create(model="llama-3.1-8b", messages=HELLO, max_tokens=5)  # type: ignore[arg-type]
    log = (await admin.get("/admin/audit-log", params={"account_id": account["id"]})).json()
    assert [e["action"] for e in log["data"]][:2] == ["account.unsuspended", "account.suspended"]
    assert log["data"][1]["after"] == {"reason": "chargeback"}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"spend_limit": {"amount": "-1", "period": "day"}}, "spend_limit.amount"),
        ({"spend_limit": {"amount": "1e3", "period": "day"}}, "spend_limit.amount"),
        ({"spend_limit": {"amount": "1", "period": "year"}}, "spend_limit.period"),
        (
            {"spend_limit": {"amount": "1", "period": "day", "timezone": "Mars/Base"}},
            "spend_limit.timezone",
        ),
        ({"spend_limit": {"amount": "1", "period": "day", "x": 1}}, "spend_limit"),
        ({"spend_limit": "5"}, "spend_limit"),
        ({"scope": "admin"}, "scope"),
        ({"expires_at": "tomorrow"}, "expires_at"),
        ({"allowed_models": ["llama-3.1-8b", "nope"]}, "allowed_models"),
    ],
)
async def test_bad_key_settings_are_a_400_naming_the_field_and_change_nothing(
    admin: httpx.AsyncClient, clean_db: AsyncEngine, body: dict[str, Any], param: str
) -> None:
    account, _ = await new_account_with_key(admin)
    response = await admin.post(f"/admin/accounts/{account['id']}/keys", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    async with clean_db.connect() as connection:
        assert await connection.scalar(text("SELECT count(*) FROM api_keys")) == 1
        assert await connection.scalar(text("SELECT count(*) FROM spend_counters")) == 0


async def test_the_daily_reconciliation_checks_every_counter_against_the_events(
    proxy: LiveServer, admin: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    from app.db.engine import create_sessionmaker, unit_of_work
    from app.usage.reconciliation import reconcile

    account, key = await new_account_with_key(admin, credit="10.00")
    await admin.patch(
        f"/admin/accounts/{account['id']}",
        json={"user_spend_limit": {"amount": "5", "period": "month", "timezone": "Asia/Kolkata"}},
    )
    async with httpx.AsyncClient(timeout=30) as client:
        for user in ("u1", "u2", "u1"):
            assert (await _chat(client, proxy.url, key, user=user)).status_code == 200
    sessionmaker = create_sessionmaker(clean_db)
    async with unit_of_work(sessionmaker) as session:
        assert (await reconcile(session)).view()["mismatches"] == 0
    async with clean_db.begin() as connection:
        await connection.execute(
            text("UPDATE spend_counters SET spent = spent + 0.000000001 WHERE subject = 'user:u2'")
        )
    async with unit_of_work(sessionmaker) as session:
        report = (await reconcile(session)).view()
    assert report["mismatches"] == 1
    assert report["counter_details"][0]["subject"] == "user"  # never the user's value


def test_python_and_postgres_agree_on_every_period(database_url: str) -> None:
    """The hold computes periods in SQL, views and Retry-After in Python: the same bounds, for
    any instant, in zones with DST jumps at midnight, half-hour shifts and skipped days."""
    from app.credits.limits import period_end_sql, period_start_sql

    query = (
        f"SELECT {period_start_sql('l', '$2')} AS s, {period_end_sql('l', '$2')} AS e "
        "FROM (SELECT CAST($1 AS jsonb) AS l) x"
    )

    async def in_sql(stored: str, at: datetime) -> tuple[datetime, datetime | None]:
        connection = await asyncpg.connect(database_url)
        try:
            row = await connection.fetchrow(query, stored, at)
            assert row is not None
            return row["s"], row["e"]
        finally:
            await connection.close()

    @settings(max_examples=200, deadline=None)
    @given(
        at=st.datetimes(
            min_value=datetime(1971, 1, 1), max_value=datetime(2037, 12, 31), timezones=st.just(UTC)
        ),
        zone=st.sampled_from(
            [
                "UTC",
                "Europe/Berlin",
                "America/Sao_Paulo",  # DST began at midnight in some years
                "America/Havana",  # likewise
                "Asia/Kathmandu",
                "Australia/Lord_Howe",  # a 30-minute DST shift
                "Pacific/Apia",  # skipped a whole day in 2011
                "America/St_Johns",
            ]
        ),
        period=st.sampled_from(list(LimitPeriod)),
    )
    def check(at: datetime, zone: str, period: LimitPeriod) -> None:
        stored = msgspec.json.encode({"period": period.value, "timezone": zone}).decode()
        expected = calendar_period(period, ZoneInfo(zone), at)
        assert asyncio.run(in_sql(stored, at)) == expected, (at, zone, period)

    check()
