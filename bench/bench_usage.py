"""Usage queries and event ingestion at scale. Run by hand (not in CI):

    python bench/bench_usage.py [--events 10000000] [--accounts 1000] [--days 90] [--ingest-only]

On a fresh database (TEST_DATABASE_URL / DATABASE_URL's server, else the embedded one):
1. loads `--events` usage events spread over `--days` days and `--accounts` accounts with COPY
   (events only: the ledger is not part of this benchmark);
2. times one account's 90-day DAY query and 7-day HOUR query against a gateway process
   (uvicorn) answered from raw events alone — the baseline, measured in the same run;
3. runs the rollup job and times the same queries again, now answered from rollups;
4. measures `POST /admin/events` in events per second (batches of `--batch`, one request at a
   time and several at once), for live events (the last 10 minutes) and for a back-fill over
   the `--days`, then the queries once more with those events still fresh.

Targets: query p50 < 50 ms; ingestion > 20,000 events/s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgspec
from sqlalchemy import text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from litestar import Litestar  # noqa: E402

from app.db import migrate  # noqa: E402
from app.db.engine import create_engine  # noqa: E402
from app.jobs import Job, run_job  # noqa: E402
from app.usage.rollups import behind, roll_up  # noqa: E402
from tests.support import database  # noqa: E402
from tests.support.process import free_port  # noqa: E402

ADMIN = "bench-admin"
# (model, input and output price in 10⁻¹² per token, search fee in 10⁻¹² per request)
MODELS = [
    ("llama-3.1-8b", 200_000, 200_000, 0),
    ("llama-3.3-70b", 800_000, 800_000, 0),
    ("llama-3.3-70b-online", 800_000, 800_000, 6_000_000_000),
    ("deepseek-r1-70b", 8_000_000, 8_500_000, 0),
]
USERS = [None] * 6 + ["alice", "bob", "carol", "dave"]
ENDPOINTS = ["/v1/chat/completions"] * 9 + ["/v1/completions"]
COLUMNS = [
    "account_id", "time", "id", "event_key", "api_key_id", "user", "endpoint", "model",
    "prompt_tokens", "cached_tokens", "completion_tokens", "images", "search_requests",
    "audio_seconds", "cost", "currency", "price_version", "charge", "usage_source", "outcome",
]  # fmt: skip


def create_bench_app() -> Litestar:
    """The gateway app with the usage and ingestion routes, registered here if `create_app`
    does not yet (uvicorn factory: `bench_usage:create_bench_app`)."""
    from app.main import create_app
    from app.metering.routes import ingest_events
    from app.usage.routes import usage_routes

    app = create_app()
    registered = {route.path for route in app.routes}
    for handler in [*usage_routes, ingest_events]:
        if not set(handler.paths) & registered:
            app.register(handler)
    return app


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def event_rows(
    accounts: list[uuid.UUID],
    keys: list[list[uuid.UUID]],
    start: datetime,
    seconds: int,
    n: int,
    serial: int,
) -> Iterator[tuple[Any, ...]]:
    """`n` events at random instants of [start, start + seconds), in time order."""
    offsets = sorted(random.random() * seconds for _ in range(n))
    picks = random.choices(range(len(accounts)), k=n)
    models = random.choices(MODELS, k=n)
    users = random.choices(USERS, k=n)
    endpoints = random.choices(ENDPOINTS, k=n)
    for i in range(n):
        model, input_price, output_price, fee = models[i]
        prompt = int(random.random() * 4000) + 1
        completion = int(random.random() * 1000)
        account = picks[i]
        cost = prompt * input_price + completion * output_price + fee
        yield (
            accounts[account],
            start + timedelta(seconds=offsets[i]),
            uuid.UUID(int=serial + i),
            f"bench:{serial + i}",
            keys[account][i & 1],
            users[i],
            endpoints[i],
            model,
            prompt,
            0,
            completion,
            0,
            1 if fee else 0,
            Decimal(0),
            Decimal(cost).scaleb(-12),
            "EUR",
            "2025-01-01",
            "{}",
            "upstream",
            "completed",
        )


async def load(dsn: str, args: argparse.Namespace, now: datetime) -> tuple[list[uuid.UUID], float]:
    """Accounts and events (COPY, a day per transaction, in time order); returns the accounts
    and the events loaded per second."""
    connection = await asyncpg.connect(dsn)
    try:
        accounts = [uuid.uuid4() for _ in range(args.accounts)]
        keys = [[uuid.uuid4(), uuid.uuid4()] for _ in accounts]
        await connection.execute(
            "INSERT INTO accounts (id, name) SELECT id, 'bench' FROM unnest($1::uuid[]) id",
            accounts,
        )
        first = now - timedelta(days=args.days)
        months = {m for d in range(args.days + 1) for m in [(first + timedelta(days=d)).date()]}
        for month in sorted({date(m.year, m.month, 1) for m in months}):
            await connection.execute("SELECT ensure_usage_events_partition($1)", month)
        per_day, serial = args.events // args.days, 0
        started = time.perf_counter()
        for day in range(args.days):
            n = per_day + (1 if day < args.events % args.days else 0)
            rows = event_rows(accounts, keys, first + timedelta(days=day), 86_400, n, serial)
            serial += n
            await connection.copy_records_to_table("usage_events", records=rows, columns=COLUMNS)
            if day % 10 == 9:
                rate = serial / (time.perf_counter() - started)
                print(f"  loaded {serial:,} events ({rate:,.0f}/s)", flush=True)
        rate = serial / (time.perf_counter() - started)
        await connection.execute("VACUUM ANALYZE")  # the state autovacuum reaches by itself
        return accounts, rate
    finally:
        await connection.close()


async def query_latency(
    base: str, accounts: list[tuple[str, str]], body: dict[str, Any], n: int
) -> tuple[float, float, float]:
    """(p50, p99, mean rows) in ms of `body` for random accounts, one request at a time."""
    times, rows = [], []
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        for i in range(n + 20):
            _, key = random.choice(accounts)
            started = time.perf_counter()
            response = await client.post(
                "/v1/usage/completions", json=body, headers={"Authorization": f"Bearer {key}"}
            )
            elapsed = (time.perf_counter() - started) * 1000
            if response.status_code != 200:
                raise RuntimeError(response.text)
            if i >= 20:  # the first ones warm connections and caches
                times.append(elapsed)
                rows.append(len(response.json()["data"]))
    return pct(times, 0.5), pct(times, 0.99), statistics.mean(rows)


def ingest_batches(accounts: list[uuid.UUID], now: datetime, seconds: float, total: int, size: int):  # type: ignore[no-untyped-def]
    """Batches of `size` new events at random instants of the last `seconds`."""
    for _ in range(0, total, size):
        yield {
            "events": [
                {
                    "id": uuid.uuid4().hex,
                    "account_id": str(random.choice(accounts)),
                    "time": (now - timedelta(seconds=random.random() * seconds)).strftime(
                        "%Y-%m-%dT%H:%M:%S.%fZ"
                    ),
                    "model": random.choice(MODELS)[0],
                    "endpoint": "/v1/chat/completions",
                    "prompt_tokens": int(random.random() * 4000) + 1,
                    "completion_tokens": int(random.random() * 1000),
                    "user": random.choice(USERS),
                }
                for _ in range(size)
            ]
        }


async def ingest_rate(base: str, batches: list[dict[str, Any]], concurrency: int) -> float:
    # Encoded before the clock starts: the client shares the machine with the server.
    queue = [msgspec.json.encode(batch) for batch in batches]
    total = sum(len(b["events"]) for b in batches)
    headers = {"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"}
    async with httpx.AsyncClient(base_url=base, timeout=300, headers=headers) as client:

        async def worker() -> None:
            while queue:
                response = await client.post("/admin/events", content=queue.pop())
                if response.status_code != 200 or response.json()["inserted"] == 0:
                    raise RuntimeError(response.text)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return total / (time.perf_counter() - started)


def spawn_gateway(database_url: str, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "TOLLGATE_ADMIN_TOKEN": ADMIN,
        "UPSTREAM_BASE_URL": "http://127.0.0.1:9/v1",
        "UPSTREAM_API_KEY": "bench",
        "TOLLGATE_SCHEDULER": "false",  # the benchmark runs the rollup job itself
        "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    process = subprocess.Popen(
        [
            sys.executable, "-m", "uvicorn", "bench_usage:create_bench_app", "--factory",
            "--app-dir", str(ROOT / "bench"), "--host", "127.0.0.1", "--port", str(port),
            "--loop", "uvloop", "--http", "httptools", "--log-level", "warning",
            "--no-access-log",
        ],
        env=env,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.2)
    process.terminate()
    raise RuntimeError("gateway did not start")


async def create_keys(base: str, accounts: list[uuid.UUID], n: int) -> list[tuple[str, str]]:
    async with httpx.AsyncClient(
        base_url=base, headers={"Authorization": f"Bearer {ADMIN}"}
    ) as client:
        keys = []
        for account in random.sample(accounts, min(n, len(accounts))):
            response = await client.post(f"/admin/accounts/{account}/keys", json={})
            keys.append((str(account), response.json()["key"]))
        return keys


async def main(args: argparse.Namespace) -> None:
    server, source = await database.server_url()
    database_url = await database.create_database(server)
    dsn = database_url.replace("postgresql+asyncpg://", "postgresql://")
    print(f"database: {source}, fresh; {args.events:,} events, {args.accounts:,} accounts, "
          f"{args.days} days")  # fmt: skip
    now = datetime.now(UTC).replace(microsecond=0)
    process: subprocess.Popen[bytes] | None = None
    engine = create_engine(database_url, pool_size=2)
    try:
        await asyncio.to_thread(migrate.upgrade, database_url)
        print("\n1. COPY")
        accounts, load_rate = await load(dsn, args, now)
        print(f"  {args.events:,} events at {load_rate:,.0f} events/s")

        port = free_port()
        process = spawn_gateway(database_url, port)
        base = f"http://127.0.0.1:{port}"
        keys = await create_keys(base, accounts, 100)
        day = {
            "start_time": (now - timedelta(days=90)).strftime("%Y-%m-%dT00:00:00Z"),
            "end_time": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "window_size": "DAY",
            "window_timezone": "Europe/Berlin",
            "group_by": ["model"],
        }
        hour = {
            "start_time": (now - timedelta(days=7)).strftime("%Y-%m-%dT%H:00:00Z"),
            "end_time": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "window_size": "HOUR",
            "window_timezone": "America/Los_Angeles",
        }
        results: dict[str, dict[str, tuple[float, float, float]]] = {}

        async def measure(label: str) -> None:
            results[label] = {
                "90-day DAY by model": await query_latency(base, keys, day, args.queries),
                "7-day HOUR": await query_latency(base, keys, hour, args.queries),
            }
            for name, (p50, p99, rows) in results[label].items():
                print(f"  {name:<20} p50 {p50:7.1f} ms   p99 {p99:7.1f} ms   ({rows:.0f} rows)")

        if not args.ingest_only:
            print("\n2. Queries from raw events only (baseline: no rollup run yet)")
            await measure("raw")

            print("\n3. Rollup job")

            runs = folded = 0

            async def fold(connection: Any) -> Any:
                nonlocal runs, folded
                run = await roll_up(connection, lag_seconds=0)
                runs, folded = runs + 1, folded + run.events
                if runs % 10 == 0:
                    rate = folded / (time.perf_counter() - started)
                    print(f"  folded {folded:,} events ({rate:,.0f}/s)", flush=True)
                return run

            started = time.perf_counter()
            await run_job(engine, Job("usage_rollups", None, fold, again=behind))
            elapsed = time.perf_counter() - started
            async with engine.connect() as connection:
                buckets = await connection.scalar(text("SELECT count(*) FROM usage_rollups"))
            # The steady state autovacuum reaches on its own (statistics, visibility map), rather
            # than racing it for the two cores while timing.
            vacuum = await asyncpg.connect(dsn)
            try:
                await vacuum.execute("VACUUM ANALYZE usage_rollups")
            finally:
                await vacuum.close()
            print(f"  folded {args.events:,} events into {buckets:,} bucket rows (15-minute and "
                  f"hourly) in {elapsed:.1f} s, {runs} transactions")  # fmt: skip
            print("  queries from rollups (+ raw edges):")
            await measure("rollups")

        print(f"\n4. POST /admin/events, batches of {args.batch:,}")
        # Live usage (events of the last minutes, as a metering pipeline sends them) lands at
        # the end of each account's index range; a back-fill over the 90 days lands on random
        # index pages of a 10 M-event table, most of them outside the server's cache.
        for label, seconds in (
            ("live (last 10 minutes)", 600),
            ("back-fill (90 days)", args.days * 86_400),
        ):
            print(f"  {label}:")
            for concurrency in (1, 2, 4):
                batches = list(ingest_batches(accounts, now, seconds, args.ingest, args.batch))
                rate = await ingest_rate(base, batches, concurrency)
                print(f"    {concurrency} at a time: {rate:,.0f} events/s "
                      f"({args.ingest:,} events)")  # fmt: skip
        if not args.ingest_only:
            print(f"  queries with {6 * args.ingest:,} events not yet rolled up:")
            await measure("fresh")
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=30)
        await engine.dispose()
        if args.keep:
            print(f"\nkept database {database_url}")
        else:
            await database.drop_database(server, database_url)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--accounts", type=int, default=1_000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--queries", type=int, default=200, help="timed queries of each kind")
    parser.add_argument("--ingest", type=int, default=100_000, help="events per ingest run")
    parser.add_argument("--batch", type=int, default=5_000, help="events per ingest request")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    parser.add_argument(
        "--ingest-only", action="store_true", help="load, then only step 4 (no queries, rollups)"
    )
    asyncio.run(main(parser.parse_args()))
