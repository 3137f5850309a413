"""Signed webhooks from the outbox (SPEC 11), against a real receiver on loopback that checks
every signature with the `standardwebhooks` package."""

from __future__ import annotations

import asyncio
import time
import uuid
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.engine import create_sessionmaker
from app.notifications.tasks import NotificationWorker
from tests.conftest import ADMIN_TOKEN, Gateways, make_settings, new_account_with_key
from tests.gateway.conftest import FIXTURE_PRICING
from tests.support.live import LiveServer
from tests.support.process import GatewayProcess
from tests.support.receivers import WebhookReceiver, serve_receiver
from tests.support.upstream import FakeUpstream

HELLO = [{"role": "user", "content": "Say this is a test!"}]


async def _endpoint(admin: httpx.AsyncClient, url: str, **fields: Any) -> dict[str, Any]:
    response = await admin.post("/admin/webhook-endpoints", json={"url": url, **fields})
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["secret"].startswith("whsec_")
    return created


async def _chat(client: httpx.AsyncClient, url: str, key: str) -> httpx.Response:
    response = await client.post(
        f"{url}/v1/chat/completions",
        json={"model": "deepseek-r1-70b", "messages": HELLO, "max_tokens": 50},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert response.status_code == 200, response.text
    return response


async def _available(admin: httpx.AsyncClient, account_id: str) -> Decimal:
    return Decimal((await admin.get(f"/admin/accounts/{account_id}")).json()["available"])


async def test_credit_low_arrives_once_per_crossing_and_rearms_when_credit_rises_above(
    notifying: LiveServer,
    admin_n: httpx.AsyncClient,
    receiver: tuple[WebhookReceiver, LiveServer],
) -> None:
    hook, server = receiver
    endpoint = await _endpoint(admin_n, f"{server.url}/hooks", events=["credit.low"])
    hook.secret = endpoint["secret"]
    account, key = await new_account_with_key(admin_n, credit="10.00")
    threshold = Decimal("9.999")
    await admin_n.patch(
        f"/admin/accounts/{account['id']}", json={"low_balance_threshold": str(threshold)}
    )
    async with httpx.AsyncClient(timeout=30) as client:
        while await _available(admin_n, account["id"]) >= threshold:
            await _chat(client, notifying.url, key)
        for _ in range(3):  # further usage below the threshold: no second event
            await _chat(client, notifying.url, key)
        received = await hook.wait_for(1)
        await asyncio.sleep(1.5)
        assert len(hook.received) == 1
        first = received[0].verified
        assert first is not None, "the signature did not verify"
        assert first["type"] == "credit.low"
        assert first["data"]["account_id"] == account["id"]
        assert first["data"]["threshold"] == "9.999" and first["data"]["currency"] == "EUR"
        assert Decimal(first["data"]["available"]) < threshold
        # A credit that lifts it above re-arms it; the next crossing notifies again.
        await admin_n.post(
            f"/admin/accounts/{account['id']}/credits", json={"amount": "0.002", "kind": "grant"}
        )
        assert await _available(admin_n, account["id"]) >= threshold
        while await _available(admin_n, account["id"]) >= threshold:
            await _chat(client, notifying.url, key)
        await hook.wait_for(2)
    assert hook.types() == ["credit.low", "credit.low"]
    assert hook.received[0].headers["webhook-id"] != hook.received[1].headers["webhook-id"]


async def test_a_503_is_retried_with_the_same_webhook_id_and_both_attempts_are_listed(
    notifying: LiveServer,
    admin_n: httpx.AsyncClient,
    receiver: tuple[WebhookReceiver, LiveServer],
) -> None:
    hook, server = receiver
    hook.statuses = [503]
    endpoint = await _endpoint(admin_n, f"{server.url}/in", description="CRM")
    hook.secret = endpoint["secret"]
    account, _ = await new_account_with_key(admin_n)
    suspended = await admin_n.post(
        f"/admin/accounts/{account['id']}/suspend", json={"reason": "chargeback"}
    )
    assert suspended.status_code == 200
    first, second = await hook.wait_for(2)
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert first.verified == second.verified
    assert second.verified["type"] == "account.suspended"
    assert second.verified["data"] == {"account_id": account["id"], "reason": "chargeback"}
    assert second.at - first.at < 30  # the first retry comes within 30 s
    await asyncio.sleep(0.5)
    listed = (await admin_n.get(f"/admin/webhook-endpoints/{endpoint['id']}/deliveries")).json()
    (delivery,) = listed["data"]
    assert delivery["status"] == "succeeded" and delivery["type"] == "account.suspended"
    assert [a["status"] for a in delivery["attempts"]] == [503, 200]
    assert delivery["attempts"][0]["error"] == "HTTP 503"
    assert all(a["latency_ms"] >= 0 for a in delivery["attempts"])
    # Retry now sends it once more, with the same id.
    retried = await admin_n.post(
        f"/admin/webhook-endpoints/{endpoint['id']}/deliveries/{delivery['id']}/retry"
    )
    assert retried.status_code == 200
    third = (await hook.wait_for(3))[2]
    assert third.headers["webhook-id"] == first.headers["webhook-id"]
    listed = (await admin_n.get("/admin/webhook-endpoints")).json()["data"]
    assert [e["id"] for e in listed] == [endpoint["id"]] and "secret" not in listed[0]


async def test_an_event_filter_and_a_deleted_endpoint_get_nothing_else(
    notifying: LiveServer,
    admin_n: httpx.AsyncClient,
    receiver: tuple[WebhookReceiver, LiveServer],
) -> None:
    hook, server = receiver
    only_low = await _endpoint(admin_n, f"{server.url}/low", events=["credit.low"])
    everything = await _endpoint(admin_n, f"{server.url}/all")
    hook.secret = everything["secret"]
    account, _ = await new_account_with_key(admin_n)
    await admin_n.post(f"/admin/accounts/{account['id']}/suspend", json={})
    await hook.wait_for(1)
    await asyncio.sleep(1)
    assert [r.verified["type"] for r in hook.received] == ["account.suspended"]
    deleted = await admin_n.delete(f"/admin/webhook-endpoints/{everything['id']}")
    assert deleted.status_code == 200
    other, _ = await new_account_with_key(admin_n, name="Other")
    await admin_n.post(f"/admin/accounts/{other['id']}/suspend", json={})
    await asyncio.sleep(1.5)
    assert len(hook.received) == 1
    bad = await admin_n.post(
        "/admin/webhook-endpoints", json={"url": f"{server.url}/x", "events": ["credit.lo"]}
    )
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "events"
    assert (
        await admin_n.post("/admin/webhook-endpoints", json={"url": "ftp://x"})
    ).status_code == 400
    assert only_low["events"] == ["credit.low"]


async def test_a_rolled_back_change_sends_nothing(
    notifying: LiveServer,
    admin_n: httpx.AsyncClient,
    receiver: tuple[WebhookReceiver, LiveServer],
    clean_db: AsyncEngine,
) -> None:
    from app.accounts import service as accounts
    from app.db.engine import create_sessionmaker, unit_of_work

    hook, server = receiver
    hook.secret = (await _endpoint(admin_n, f"{server.url}/h"))["secret"]
    rolled, _ = await new_account_with_key(admin_n, name="Rolled back")
    kept, _ = await new_account_with_key(admin_n, name="Kept")
    sessionmaker = create_sessionmaker(clean_db)
    with pytest.raises(RuntimeError):
        async with unit_of_work(sessionmaker) as session:
            await accounts.suspend(session, uuid.UUID(rolled["id"]), "never happened")
            raise RuntimeError("the change fails after its event was written")
    async with unit_of_work(sessionmaker) as session:
        await accounts.suspend(session, uuid.UUID(kept["id"]), "happened")
    await hook.wait_for(1)
    await asyncio.sleep(1)
    assert [r.verified["data"]["account_id"] for r in hook.received] == [kept["id"]]
    async with clean_db.connect() as connection:
        assert await connection.scalar(text("SELECT count(*) FROM notification_events")) == 1


async def test_an_event_committed_by_a_killed_gateway_is_delivered_after_restart(
    database_url: str,
    upstream: FakeUpstream,
    clean_db: AsyncEngine,
    receiver: tuple[WebhookReceiver, LiveServer],
) -> None:
    hook, server = receiver
    env = {
        "DATABASE_URL": database_url,
        "TOLLGATE_ADMIN_TOKEN": ADMIN_TOKEN,
        "UPSTREAM_BASE_URL": upstream.url,
        "TOLLGATE_PRICING_DIR": str(FIXTURE_PRICING),
        "TOLLGATE_SCHEDULER": "false",
        # The endpoint is down while the first gateway runs: the event stays in the outbox.
    }
    first = GatewayProcess(env).start()
    try:
        async with httpx.AsyncClient(
            base_url=first.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        ) as admin:
            down = serve_receiver(WebhookReceiver())
            down_url = down.url
            down.stop()  # a refused port: every attempt fails
            endpoint = await _endpoint(admin, f"{down_url}/h")
            account, _ = await new_account_with_key(admin)
            await admin.post(f"/admin/accounts/{account['id']}/suspend", json={})
            await asyncio.sleep(1)
    finally:
        first.kill()
    async with clean_db.begin() as connection:
        await connection.execute(
            text("UPDATE webhook_endpoints SET url = :url"), {"url": f"{server.url}/h"}
        )
    hook.secret = endpoint["secret"]
    second = GatewayProcess(env).start()
    try:
        async with httpx.AsyncClient(
            base_url=second.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        ) as admin:
            listing = f"/admin/webhook-endpoints/{endpoint['id']}/deliveries"
            (pending,) = (await admin.get(listing)).json()["data"]
            assert pending["attempts"], "the first gateway tried the dead endpoint"
            # Due now rather than at its back-off (the operator's "retry now"); any live
            # instance may send it.
            await admin.post(f"{listing}/{pending['id']}/retry")
            (got,) = await hook.wait_for(1, seconds=20)
            # Its outcome is recorded a moment after the send (with others that finish then).
            for _ in range(50):
                deliveries = (await admin.get(listing)).json()["data"]
                if deliveries[0]["status"] != "pending":
                    break
                await asyncio.sleep(0.1)
    finally:
        second.stop()
    (delivery,) = deliveries
    assert delivery["status"] == "succeeded"
    attempts = delivery["attempts"]
    assert attempts[0]["status"] is None and "Connect" in attempts[0]["error"]
    assert attempts[-1]["status"] == 200
    assert got.verified is not None and got.verified["type"] == "account.suspended"


async def test_a_slow_endpoint_with_a_backlog_leaves_the_request_path_alone(
    notifying: LiveServer,
    admin_n: httpx.AsyncClient,
    clean_db: AsyncEngine,
) -> None:
    """1,000 events for an endpoint that takes 5 s per request: requests keep being served and
    the backlog drains a few at a time. Latency is printed beside a run without an endpoint
    (not asserted on: timing assertions flake on shared machines)."""
    from app.db.engine import create_sessionmaker, unit_of_work
    from app.notifications import service as notifications
    from app.notifications.schemas import EventType

    _, key = await new_account_with_key(admin_n, credit="100.00")  # `pro`: 300 requests a minute

    async def latencies(n: int) -> list[float]:
        spent = []
        async with httpx.AsyncClient(timeout=30) as client:
            for _ in range(n):
                start = time.perf_counter()
                await _chat(client, notifying.url, key)
                spent.append((time.perf_counter() - start) * 1000)
        return sorted(spent)

    baseline = await latencies(40)
    slow = WebhookReceiver(delay=5.0)
    server = serve_receiver(slow)
    try:
        slow.secret = (await _endpoint(admin_n, f"{server.url}/slow"))["secret"]
        sessionmaker = create_sessionmaker(clean_db)
        async with unit_of_work(sessionmaker) as session:
            for i in range(1000):
                # Different accounts, so their deliveries may go side by side.
                await notifications.emit(
                    session, uuid.UUID(int=i + 1), EventType.TIER_CHANGED, {"from": "a", "to": "b"}
                )
        loaded = await latencies(40)
        await slow.wait_for(1, seconds=15)
        print(
            f"\nrequest p50 without an endpoint {baseline[20]:.2f} ms, with 1,000 deliveries to"
            f" a 5 s endpoint pending {loaded[20]:.2f} ms"
        )
        async with clean_db.connect() as connection:
            statuses = dict(
                (
                    await connection.execute(
                        text("SELECT status, count(*) FROM notification_deliveries GROUP BY 1")
                    )
                ).all()
            )
        assert statuses.get("failed", 0) == 0
        assert sum(statuses.values()) == 1000  # every event fanned out, none lost
        assert all(r.verified is not None for r in slow.received)
    finally:
        server.stop()


async def test_a_purchase_that_raises_the_tier_says_so_and_a_grant_does_not(
    notifying: LiveServer,
    admin_n: httpx.AsyncClient,
    receiver: tuple[WebhookReceiver, LiveServer],
) -> None:
    hook, server = receiver
    hook.secret = (await _endpoint(admin_n, f"{server.url}/t", events=["tier.changed"]))["secret"]
    account, _ = await new_account_with_key(admin_n)
    credits = f"/admin/accounts/{account['id']}/credits"
    await admin_n.post(credits, json={"amount": "500", "kind": "grant"})  # not purchased
    await admin_n.post(credits, json={"amount": "4.99"})
    await admin_n.post(credits, json={"amount": "0.01"})  # 5.00 purchased: `standard`
    (got,) = await hook.wait_for(1)
    await asyncio.sleep(1)
    assert len(hook.received) == 1
    assert got.verified["data"] == {"account_id": account["id"], "from": "free", "to": "standard"}


async def test_an_event_is_sent_on_the_outbox_notice_not_at_the_next_poll(
    gateways: Gateways,
    clean_db: AsyncEngine,
    database_url: str,
    receiver: tuple[WebhookReceiver, LiveServer],
) -> None:
    """A worker that would read the outbox only once a minute still sends an event at once:
    the insert's notice (`LISTEN tollgate_outbox`) wakes it. No other worker runs meanwhile."""
    gateways.stop_notifying()  # earlier tests' gateways with workers of their own
    gateway = gateways.get()  # without one
    hook, server = receiver
    worker = NotificationWorker(
        create_sessionmaker(clean_db), make_settings(database_url), poll_seconds=60
    )
    worker.start()
    try:
        async with httpx.AsyncClient(
            base_url=gateway.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30
        ) as admin:
            hook.secret = (await _endpoint(admin, f"{server.url}/hooks"))["secret"]
            account, _ = await new_account_with_key(admin)
            await asyncio.sleep(1)  # its first read is done: it waits for a notice, or a minute
            assert worker._listener is not None and not worker._listener.is_closed()
            started = time.monotonic()
            await admin.post(f"/admin/accounts/{account['id']}/suspend", json={})
            await hook.wait_for(1, seconds=10)
            assert time.monotonic() - started < 5
        assert hook.types() == ["account.suspended"]
    finally:
        await worker.close()


async def test_close_ends_a_worker_woken_as_it_is_cancelled(
    clean_db: AsyncEngine, database_url: str
) -> None:
    """Woken and cancelled within the same few turns of the event loop (a recorded outcome
    wakes the worker as the gateway shuts down), the worker still stops: each number of turns
    between the two is tried, since which one hits the window depends on the wait's insides."""
    for turns in range(8):
        worker = NotificationWorker(
            create_sessionmaker(clean_db), make_settings(database_url), poll_seconds=60
        )
        worker.start()
        await asyncio.sleep(0.3)  # its first read is done: it waits for a wake-up
        worker.nudge()
        for _ in range(turns):
            await asyncio.sleep(0)
        closing = asyncio.ensure_future(worker.close())
        # A swallowed cancellation lets the worker's loop go on, and `close` wait for it (a
        # minute, the next poll, and then for ever): not a measure of speed, a hang.
        await asyncio.wait({closing}, timeout=5)
        if not closing.done():
            closing.cancel()  # cancels the loop it awaits as well
        assert closing.done() and not closing.cancelled(), f"close hung after {turns} turns"
