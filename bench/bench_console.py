"""The console's account page on a busy account: server time with 100,000 ledger entries.

    python bench/bench_console.py [--entries 100000] [--runs 50]

On a fresh database (TEST_DATABASE_URL / DATABASE_URL's server, else the embedded one): one
account whose `--entries` usage events (30 days, several models) are settled through the
real settlement statement (so each has its ledger entry) and folded into rollups, and a
small account with ten, the baseline in the same run. A gateway process (uvicorn) serves the
console; an operator signs in; the page is timed `--runs` times on loopback (time to the last
byte, which is the server's time plus a loopback round trip), first page and an older one.
Target: under 200 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.console import operators
from app.console.schemas import OperatorRole
from app.credits import repository as credits
from app.credits.schemas import LedgerKind
from app.db import migrate
from app.db.engine import create_engine, create_sessionmaker, unit_of_work
from app.db.models import Account
from app.usage.partitions import maintain_partitions
from app.usage.rollups import behind, roll_up
from bench.gateway_overhead import ADMIN, spawn, wait_ready
from tests.support import database
from tests.support.events import usage_event
from tests.support.process import free_port

PASSWORD = "bench password 123"
MODELS = ("llama-3.1-8b", "llama-3.3-70b", "deepseek-r1-70b", "llama-3.3-70b-online")


async def seed(database_url: str, entries: int) -> tuple[uuid.UUID, uuid.UUID, str]:
    engine = create_engine(database_url, pool_size=2)
    sessionmaker = create_sessionmaker(engine)
    busy, small = uuid.uuid4(), uuid.uuid4()
    now = datetime.now(UTC)
    async with unit_of_work(sessionmaker) as session:
        await maintain_partitions(session, (now - timedelta(days=40)).date())
        await maintain_partitions(session, now.date())
        for account_id, name in ((busy, "Busy account"), (small, "Small account")):
            session.add(Account(id=account_id, name=name))
        await session.flush()
        for account_id in (busy, small):
            await credits.append_entry(
                session,
                account_id=account_id,
                kind=LedgerKind.PURCHASE,
                amount=Decimal("100000"),
                reference=f"seed:{account_id}",
            )
        _, link = await operators.create_operator(
            session, "bench@example.com", OperatorRole.VIEWER, "http://x"
        )
        await operators.set_password(session, link.split("token=")[1], PASSWORD)
    started = time.perf_counter()
    for account_id, count in ((busy, entries), (small, 10)):
        for start in range(0, count, 5000):
            batch = []
            for i in range(start, min(start + 5000, count)):
                event = usage_event(
                    account_id,
                    f"0.000{(i * 7919) % 9000 + 1000}",
                    time=now - timedelta(seconds=(count - i) * 30 * 86400 / count),
                )
                batch.append(msgspec.structs.replace(event, model=MODELS[i % 4]))
            async with unit_of_work(sessionmaker) as session:
                await credits.settle(session, batch)
            print(f"\r  settled {min(start + 5000, count):7d} / {count}", end="", flush=True)
    print(f"\r{entries} events and ledger entries settled in {time.perf_counter() - started:.1f} s")
    while True:
        async with unit_of_work(sessionmaker) as session:
            run = await roll_up(session, lag_seconds=0)
        if not behind(run):
            break
    await engine.dispose()
    return busy, small, "bench@example.com"


def sign_in(client: httpx.Client, email: str) -> None:
    form = client.get("/console/login").text
    csrf = re.search(r'name="_csrf_token" value="([^"]+)"', form)
    assert csrf is not None
    answer = client.post(
        "/console/login", data={"email": email, "password": PASSWORD, "_csrf_token": csrf[1]}
    )
    assert answer.status_code == 303, answer.text


def timed(client: httpx.Client, path: str, runs: int) -> list[float]:
    for _ in range(5):
        client.get(path)
    spent = []
    for _ in range(runs):
        start = time.perf_counter()
        response = client.get(path)
        spent.append((time.perf_counter() - start) * 1000)
        assert response.status_code == 200, response.text[:300]
    return sorted(spent)


async def main(args: argparse.Namespace) -> None:
    server, source = await database.server_url()
    database_url = await database.create_database(server)
    await asyncio.to_thread(migrate.upgrade, database_url)
    busy, small, email = await seed(database_url, args.entries)
    port = free_port()
    gateway = spawn(
        "app.main:create_app",
        port,
        {
            "DATABASE_URL": database_url,
            "TOLLGATE_ADMIN_TOKEN": ADMIN,
            "UPSTREAM_BASE_URL": "http://127.0.0.1:9/v1",
            "TOLLGATE_SCHEDULER": "false",
            "TOLLGATE_NOTIFICATIONS": "false",
        },
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}/healthz")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            sign_in(client, email)
            print(f"database: {source}; one gateway process; {args.runs} runs each\n")
            page = client.get(f"/console/accounts/{busy}").text
            older = re.findall(r'href="\?before=([0-9a-f-]+)"', page)
            cases = [
                ("account page, 10 ledger entries (baseline)", f"/console/accounts/{small}"),
                (f"account page, {args.entries:,} ledger entries", f"/console/accounts/{busy}"),
                ("  its second ledger page", f"/console/accounts/{busy}?before={older[0]}"),
                ("accounts list, sorted by this month's spend", "/console/accounts?sort=spend"),
                ("overview", "/console"),
            ]
            for label, path in cases:
                spent = timed(client, path, args.runs)
                print(
                    f"{label:<48} p50 {statistics.median(spent):7.1f} ms"
                    f"  p99 {spent[min(len(spent) - 1, int(0.99 * len(spent)))]:7.1f} ms"
                )
    finally:
        gateway.terminate()
        gateway.wait(timeout=15)
        await database.drop_database(server, database_url)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=50)
    asyncio.run(main(parser.parse_args()))
