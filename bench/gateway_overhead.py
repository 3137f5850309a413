"""Gateway overhead: the same requests direct to a fast upstream and through the gateway.

    python bench/gateway_overhead.py [--requests 2000] [--seconds 10] [--commit-per-request]
                                     [--with-limit]

Starts, as separate processes on loopback: the built-in echo upstream and one gateway process
(uvicorn, uvloop, httptools) on a fresh database (DATABASE_URL's server, else the embedded
one), with metering on: every gateway request holds credit, is rate limited and commits its
usage event durably before its response ends.

The load generator is aiohttp's client: httpx's own pool collapses to ~120 req/s at
concurrency 32 here and would measure itself.

Concurrency 1: requests alternate direct / gateway (A B A B), so drift of the machine cancels;
reports p50/p99 of each and the added latency (non-stream: full response; stream: first and
last byte). Concurrency 32: requests per second for each, and the usage writer's commits.

`--with-limit` adds a second key with a daily spend limit (never reached) beside the key
without one: at concurrency 1 the three alternate (direct, no limit, limit); at 32 the two keys
take turns twice, so the cost of a limit is read within one run.

`--with-route` gives the gateway an upstreams file where `llama-3.3-70b` has a route list of
two upstreams (the echo first, healthy; a second never reached) while `llama-3.1-8b` has the
echo alone: the two models alternate as the keys do above, so the cost of a fallback list is
read within one run.

`--baseline DIR` also starts a gateway from another checkout (e.g. a `git worktree` of the
commit before), on a database of its own migrated by that checkout, against the same upstream:
`before` alternates with `gw` as above, so a change is measured against its baseline in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.config import DEFAULT_PRICING_DIR
from app.db import migrate
from tests.support import database
from tests.support.process import free_port

ADMIN = "bench-admin"
MODEL = "llama-3.1-8b"
BODY: dict[str, object] = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "Say this is a test!"}],
}
ROUTED_MODEL = "llama-3.3-70b"  # the model with two upstreams under --with-route
UPSTREAMS = """default = "echo"
[upstreams.echo]
base_url = "http://127.0.0.1:{port}/v1"
api_key = "bench"
[upstreams.spare]
base_url = "http://127.0.0.1:9/v1"
[routes]
"{model}" = ["echo", "spare"]
"""


def bodies(model: str) -> tuple[bytes, bytes]:
    body = {**BODY, "model": model}
    return json.dumps(body).encode(), json.dumps({**body, "stream": True}).encode()


BODY_JSON, BODY_STREAM = bodies(MODEL)
JSON = {"content-type": "application/json"}
BENCH_TIERS = """basis = "purchased"
[[tier]]
name = "bench"
min_total = "0"
rpm = 100_000_000
tpm = 100_000_000_000
"""


LOG = tempfile.TemporaryFile()  # noqa: SIM115 (the spawned servers' output, for the run)


def spawn(
    module: str, port: int, env: dict[str, str], tree: Path | None = None
) -> subprocess.Popen[bytes]:
    if tree is not None:  # another checkout's code, run from its own folder
        env = {**env, "PYTHONPATH": str(tree)}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            module,
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        env={**os.environ, **env},
        cwd=tree,
        # Its log (a line per request, as in production) to a file, not this terminal.
        stdout=LOG,
        stderr=LOG,
    )


def wait_ready(url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not start")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def timed(
    client: aiohttp.ClientSession, url: str, stream: bool, model: str | None = None
) -> tuple[float, float]:
    """(first byte, last byte) in ms."""
    plain, streamed = bodies(model) if model else (BODY_JSON, BODY_STREAM)
    body = streamed if stream else plain
    start = time.perf_counter()
    first = 0.0
    try:
        async with client.post(url, data=body, headers=JSON) as response:
            async for _ in response.content.iter_any():
                if not first:
                    first = time.perf_counter()
            if response.status != 200:
                raise RuntimeError(f"{url}: {response.status}")
    except aiohttp.ClientError as exc:
        raise RuntimeError(f"{url}: {exc!r}") from exc
    end = time.perf_counter()
    return (first - start) * 1000, (end - start) * 1000


@dataclass(frozen=True)
class Target:
    """One way through a gateway: its URL, a key, and the model asked for (None: MODEL)."""

    gateway: str
    key: str
    model: str | None = None

    @property
    def url(self) -> str:
        return f"{self.gateway}/v1/chat/completions"


async def latency(
    direct: str, targets: dict[str, Target], n: int, stream: bool
) -> dict[str, list[float]]:
    """First and last byte of each request, alternating direct and each target."""
    results: dict[str, list[float]] = {"direct_first": [], "direct_last": []}
    for name in targets:
        results[f"{name}_first"], results[f"{name}_last"] = [], []
    async with aiohttp.ClientSession() as d:
        clients = {
            name: aiohttp.ClientSession(headers={"Authorization": f"Bearer {target.key}"})
            for name, target in targets.items()
        }
        try:
            for _ in range(50):  # warm every path
                await timed(d, direct, stream)
                for name, client in clients.items():
                    await timed(client, targets[name].url, stream, targets[name].model)
            for _ in range(n):
                first, last = await timed(d, direct, stream)
                results["direct_first"].append(first)
                results["direct_last"].append(last)
                for name, client in clients.items():
                    target = targets[name]
                    first, last = await timed(client, target.url, stream, target.model)
                    results[f"{name}_first"].append(first)
                    results[f"{name}_last"].append(last)
        finally:
            for client in clients.values():
                await client.close()
    return results


async def throughput(
    url: str, key: str | None, seconds: float, concurrency: int, model: str | None = None
) -> float:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body = bodies(model)[0] if model else BODY_JSON
    done = 0
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(headers=headers, connector=connector) as client:

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                async with client.post(url, data=body, headers=JSON) as response:
                    await response.read()
                    if response.status != 200:
                        raise RuntimeError(await response.text())
                done += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done / (time.perf_counter() - start)


def commits(gateway: str) -> float:
    text = httpx.get(f"{gateway}/metrics").text  # no TOLLGATE_METRICS_TOKEN in the bench
    for line in text.splitlines():
        if line.startswith("tollgate_usage_commits_total"):
            return float(line.split()[-1])
    return 0.0


def seed(gateway: str) -> tuple[httpx.Client, str]:
    """An account with plenty of credit on `gateway`; its admin client and the account id."""
    admin = httpx.Client(base_url=gateway, headers={"Authorization": f"Bearer {ADMIN}"})
    account = admin.post("/admin/accounts", json={"name": "bench"}).json()
    admin.post(
        f"/admin/accounts/{account['id']}/credits",
        json={"amount": "1000000", "reference": str(uuid.uuid4())},
    ).raise_for_status()
    return admin, account["id"]


def new_key(admin: httpx.Client, account_id: str, **fields: object) -> str:
    created = admin.post(f"/admin/accounts/{account_id}/keys", json=fields)
    created.raise_for_status()
    key: str = created.json()["key"]
    return key


async def main(args: argparse.Namespace) -> None:
    server, source = await database.server_url()
    databases = [await database.create_database(server)]
    await asyncio.to_thread(migrate.upgrade, databases[0])
    pricing = Path(tempfile.mkdtemp(prefix="tollgate-bench-pricing-"))
    for table in DEFAULT_PRICING_DIR.glob("*.toml"):
        if table.name != "tiers.toml":
            shutil.copy(table, pricing / table.name)
    (pricing / "tiers.toml").write_text(BENCH_TIERS)  # limits high enough not to interfere

    upstream_port, gateway_port = free_port(), free_port()
    upstreams_env = {}
    if args.with_route:
        upstreams = pricing.with_name(pricing.name + "-upstreams.toml")  # not a rate table
        upstreams.write_text(UPSTREAMS.format(port=upstream_port, model=ROUTED_MODEL))
        upstreams_env["TOLLGATE_UPSTREAMS_FILE"] = str(upstreams)
    direct = f"http://127.0.0.1:{upstream_port}/v1/chat/completions"
    gateway = f"http://127.0.0.1:{gateway_port}"

    def gateway_env(database_url: str) -> dict[str, str]:
        return {
            "DATABASE_URL": database_url,
            "TOLLGATE_ADMIN_TOKEN": ADMIN,
            "UPSTREAM_BASE_URL": f"http://127.0.0.1:{upstream_port}/v1",
            "UPSTREAM_API_KEY": "bench",
            "TOLLGATE_PRICING_DIR": str(pricing),
            "TOLLGATE_SCHEDULER": "false",
            "TOLLGATE_WRITER_MAX_BATCH": "1" if args.commit_per_request else "1000",
        }

    processes = [
        spawn("app.demo.echo:create_echo_app", upstream_port, {}),
        spawn("app.main:create_app", gateway_port, {**gateway_env(databases[0]), **upstreams_env}),
    ]
    baseline = None
    if args.baseline is not None:
        databases.append(await database.create_database(server))
        tree = args.baseline.resolve()
        subprocess.run(
            [
                sys.executable,
                "-c",
                f"from app.db import migrate; migrate.upgrade({databases[1]!r})",
            ],
            cwd=tree,
            env={**os.environ, "PYTHONPATH": str(tree)},
            check=True,
        )
        baseline = f"http://127.0.0.1:{free_port()}"
        port = int(baseline.rsplit(":", 1)[1])
        processes.append(spawn("app.main:create_app", port, gateway_env(databases[1]), tree))
    try:
        wait_ready(f"http://127.0.0.1:{upstream_port}/v1/models")
        wait_ready(f"{gateway}/healthz")
        admin, account_id = seed(gateway)
        targets = {"gw": Target(gateway, new_key(admin, account_id))}
        if baseline is not None:
            wait_ready(f"{baseline}/healthz")
            before_admin, before_account = seed(baseline)
            targets["before"] = Target(baseline, new_key(before_admin, before_account))
        if args.with_limit:
            limit = {"amount": "1000000", "period": "day"}
            targets["limit"] = Target(gateway, new_key(admin, account_id, spend_limit=limit))
        if args.with_route:
            targets["route2"] = Target(gateway, targets["gw"].key, ROUTED_MODEL)
        print(f"database: {source}; upstream: built-in echo; metering on")
        print("targets: " + ", ".join(f"{name} {t.gateway}" for name, t in targets.items()))
        if baseline is not None:
            print(f"gw: this checkout; before: {args.baseline} (its own gateway and database)")
        if args.with_route:
            print(f"gw: {MODEL} on one upstream; route2: {ROUTED_MODEL} on [echo, spare]")
        if args.with_limit:
            print("gw: a key without a spend limit; limit: a key with a daily limit")
        print()

        for stream in (False, True):
            r = await latency(direct, targets, args.requests, stream)
            label = "stream" if stream else "non-stream"
            for name in targets:
                rows = [("last byte", "direct_last", f"{name}_last")]
                if stream:
                    rows.insert(0, ("first byte", "direct_first", f"{name}_first"))
                for what, d, g in rows:
                    added50 = pct(r[g], 0.5) - pct(r[d], 0.5)
                    added99 = pct(r[g], 0.99) - pct(r[d], 0.99)
                    added_mean = statistics.mean(r[g]) - statistics.mean(r[d])
                    print(
                        f"c=1 {label:<10} {name:<6} {what:<10} direct p50 {pct(r[d], 0.5):6.2f} ms"
                        f" p99 {pct(r[d], 0.99):6.2f} | gateway p50 {pct(r[g], 0.5):6.2f} ms"
                        f" p99 {pct(r[g], 0.99):6.2f} | added p50 {added50:5.2f} ms"
                        f" p99 {added99:5.2f} ms (mean {added_mean:.2f})"
                    )

        rps_direct = await throughput(direct, None, args.seconds, 32)
        print(f"\nc=32 direct {rps_direct:7.0f} req/s")
        rounds = 2 if len(targets) > 1 else 1
        for _ in range(rounds):
            for name, target in targets.items():
                before = commits(target.gateway)
                start = time.perf_counter()
                rps = await throughput(
                    target.url, target.key, args.seconds / rounds, 32, target.model
                )
                elapsed = time.perf_counter() - start
                made = commits(target.gateway) - before
                print(
                    f"c=32 {name:<6} gateway {rps:7.0f} req/s metered"
                    f" | {made / elapsed:.0f} commits/s ({rps * elapsed / max(made, 1):.1f}"
                    " requests per commit)"
                )
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=15)
        for database_url in databases:
            await database.drop_database(server, database_url)
        shutil.rmtree(pricing, ignore_errors=True)
        pricing.with_name(pricing.name + "-upstreams.toml").unlink(missing_ok=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--commit-per-request",
        action="store_true",
        help="turn group commit off: one usage commit per request",
    )
    parser.add_argument(
        "--with-limit",
        action="store_true",
        help="also measure a key with a daily spend limit, in the same run",
    )
    parser.add_argument(
        "--with-route",
        action="store_true",
        help="also measure a model whose route lists two upstreams, in the same run",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help="a checkout (e.g. a git worktree of the commit before) to measure beside this one",
    )
    asyncio.run(main(parser.parse_args()))
