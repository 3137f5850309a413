"""Notifications: delivery rate to a fast receiver, and the request path beside them.

    python bench/bench_notifications.py [--events 10000] [--requests 1000]

Starts, as separate processes on loopback: the echo upstream, one gateway (metering and the
outbox worker on) on a fresh database, and a fast webhook receiver (uvicorn, answers 200 at
once). Then, in one run:

1. the request path at concurrency 1 with no endpoint configured (A/B against the upstream
   direct, interleaved, as `gateway_overhead.py` does);
2. `--events` outbox events (for 1,000 accounts, so deliveries may go side by side) written
   in one transaction, and the time until the receiver has every one: events per second
   delivered by one instance;
3. the request path again while a second batch of events is being delivered.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
import asyncpg
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.config import DEFAULT_PRICING_DIR
from app.db import migrate
from bench.gateway_overhead import ADMIN, BENCH_TIERS, BODY_JSON, JSON, pct, spawn, wait_ready
from tests.support import database
from tests.support.process import free_port

RECEIVER = """
import itertools
count = itertools.count()
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    n = next(count)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(n).encode()})
"""


async def added_latency(direct: str, gateway: str, key: str, n: int) -> tuple[float, float]:
    """(added p50, added p99) in ms, alternating direct and gateway."""
    d_times, g_times = [], []
    async with (
        aiohttp.ClientSession() as d,
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as g,
    ):
        for i in range(n + 50):
            for client, url, into in ((d, direct, d_times), (g, gateway, g_times)):
                start = time.perf_counter()
                async with client.post(url, data=BODY_JSON, headers=JSON) as response:
                    await response.read()
                    assert response.status == 200, await response.text()
                if i >= 50:
                    into.append((time.perf_counter() - start) * 1000)
    return pct(g_times, 0.5) - pct(d_times, 0.5), pct(g_times, 0.99) - pct(d_times, 0.99)


async def emit(database_url: str, events: int) -> None:
    """`events` outbox rows in one transaction, as the domains write them."""
    connection = await asyncpg.connect(database_url)
    try:
        await connection.executemany(
            "INSERT INTO notification_events (account_id, id, type, data) "
            "VALUES ($1, $2, 'tier.changed', $3)",
            [
                (
                    uuid.UUID(int=i % 1000 + 1),
                    f"msg_{uuid.uuid4().hex}",
                    json.dumps(
                        {"account_id": str(uuid.UUID(int=i % 1000 + 1)), "from": "a", "to": "b"}
                    ),
                )
                for i in range(events)
            ],
        )
    finally:
        await connection.close()


async def delivered(database_url: str) -> int:
    connection = await asyncpg.connect(database_url)
    try:
        return int(
            await connection.fetchval(
                "SELECT count(*) FROM notification_deliveries WHERE status = 'succeeded'"
            )
        )
    finally:
        await connection.close()


async def main(args: argparse.Namespace) -> None:
    server, source = await database.server_url()
    database_url = await database.create_database(server)
    await asyncio.to_thread(migrate.upgrade, database_url)
    pricing = Path(tempfile.mkdtemp(prefix="tollgate-bench-pricing-"))
    for table in DEFAULT_PRICING_DIR.glob("*.toml"):
        if table.name != "tiers.toml":
            shutil.copy(table, pricing / table.name)
    (pricing / "tiers.toml").write_text(BENCH_TIERS)  # limits high enough not to interfere
    receiver_dir = Path(database_url.rsplit("/", 1)[-1])
    upstream_port, gateway_port, receiver_port = free_port(), free_port(), free_port()
    receiver_file = Path("/tmp") / f"{receiver_dir}_receiver.py"
    receiver_file.write_text(RECEIVER)
    direct = f"http://127.0.0.1:{upstream_port}/v1/chat/completions"
    gateway = f"http://127.0.0.1:{gateway_port}"
    receiver_proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "uvicorn",
        f"{receiver_file.stem}:app",
        "--app-dir",
        "/tmp",
        "--port",
        str(receiver_port),
        "--log-level",
        "warning",
        "--no-access-log",
    )
    processes = [
        spawn("app.demo.echo:create_echo_app", upstream_port, {}),
        spawn(
            "app.main:create_app",
            gateway_port,
            {
                "DATABASE_URL": database_url,
                "TOLLGATE_ADMIN_TOKEN": ADMIN,
                "UPSTREAM_BASE_URL": f"http://127.0.0.1:{upstream_port}/v1",
                "UPSTREAM_API_KEY": "bench",
                "TOLLGATE_SCHEDULER": "false",
                "TOLLGATE_PRICING_DIR": str(pricing),
            },
        ),
    ]
    try:
        wait_ready(f"http://127.0.0.1:{upstream_port}/v1/models")
        wait_ready(f"{gateway}/healthz")
        admin = httpx.Client(base_url=gateway, headers={"Authorization": f"Bearer {ADMIN}"})
        account = admin.post("/admin/accounts", json={"name": "bench"}).json()
        admin.post(
            f"/admin/accounts/{account['id']}/credits",
            json={"amount": "1000000", "reference": str(uuid.uuid4())},
        )
        key = admin.post(f"/admin/accounts/{account['id']}/keys", json={}).json()["key"]
        print(f"database: {source}; one gateway process, metering and the outbox worker on\n")
        url = f"{gateway}/v1/chat/completions"
        p50, p99 = await added_latency(direct, url, key, args.requests)
        print(f"c=1 no endpoint          added p50 {p50:5.2f} ms  p99 {p99:5.2f} ms")

        admin.post("/admin/webhook-endpoints", json={"url": f"http://127.0.0.1:{receiver_port}/"})
        await emit(database_url, args.events)
        start = time.perf_counter()
        while (done := await delivered(database_url)) < args.events:
            print(f"\r  delivered {done:6d} / {args.events}", end="", flush=True)
            await asyncio.sleep(0.5)
        elapsed = time.perf_counter() - start
        print(
            f"\r{args.events} events delivered in {elapsed:.1f} s: "
            f"{args.events / elapsed:.0f} events/s from one instance"
        )

        await emit(database_url, args.events)
        p50, p99 = await added_latency(direct, url, key, args.requests)
        backlog = args.events * 2 - await delivered(database_url)
        print(
            f"c=1 endpoint, delivering added p50 {p50:5.2f} ms  p99 {p99:5.2f} ms"
            f" ({backlog} deliveries still pending at the end)"
        )
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=15)
        receiver_proc.terminate()
        await receiver_proc.wait()
        receiver_file.unlink(missing_ok=True)
        await database.drop_database(server, database_url)
        shutil.rmtree(pricing, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=1000)
    asyncio.run(main(parser.parse_args()))
