"""Tollgate as a target of `../shared/peer-bench`: a fresh database, `tollgate serve` against
the harness's fake upstream with metering on, a funded key; prints what `run-peers.sh` needs.

    python bench/peer_target.py [--port 8080] [--workers 1] [--upstream http://127.0.0.1:18000/v1]

then, in ../shared/peer-bench (with `bash peers/start.sh` running):

    ./run-peers.sh --out /tmp/peers.json --target tollgate=http://127.0.0.1:8080/v1 \\
        --key tollgate=<key> --pid tollgate=<pid>

Runs until Ctrl+C or SIGTERM, then stops the gateway and drops its database. The database is
TEST_DATABASE_URL's or DATABASE_URL's server when one answers (the machine's PostgreSQL: the
note of a run should say so), else the embedded one. Tiers are raised out of the way so that
RPM/TPM never refuse the benchmark's traffic; everything else (holds, settlement with a durable
commit, spend-limit counters, the outbox) is as in production.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.config import DEFAULT_PRICING_DIR
from tests.support import database

ADMIN = "peer-bench-admin"
BENCH_TIERS = """basis = "purchased"
[[tier]]
name = "bench"
min_total = "0"
rpm = 100_000_000
tpm = 100_000_000_000
"""


def wait_ready(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"tollgate serve exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} did not answer")


async def main(args: argparse.Namespace) -> None:
    server, source = await database.server_url()
    database_url = await database.create_database(server)
    pricing = Path(tempfile.mkdtemp(prefix="tollgate-peer-pricing-"))
    for table in DEFAULT_PRICING_DIR.glob("*.toml"):
        if table.name != "tiers.toml":
            shutil.copy(table, pricing / table.name)
    (pricing / "tiers.toml").write_text(BENCH_TIERS)
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "TOLLGATE_ADMIN_TOKEN": ADMIN,
        "UPSTREAM_BASE_URL": args.upstream,
        "UPSTREAM_API_KEY": "peer-bench",
        "TOLLGATE_PRICING_DIR": str(pricing),
    }
    command = [sys.executable, "-m", "app.cli", "serve", "--port", str(args.port)]
    process = subprocess.Popen([*command, "--workers", str(args.workers)], env=env)
    gateway = f"http://127.0.0.1:{args.port}"
    try:
        wait_ready(f"{gateway}/healthz", process)
        with httpx.Client(base_url=gateway, headers={"Authorization": f"Bearer {ADMIN}"}) as admin:
            account = admin.post("/admin/accounts", json={"name": "peer-bench"}).json()
            admin.post(
                f"/admin/accounts/{account['id']}/credits",
                json={"amount": "1000000", "kind": "purchase", "reference": str(uuid.uuid4())},
            ).raise_for_status()
            key = admin.post(f"/admin/accounts/{account['id']}/keys", json={}).json()["key"]
        print(f"database: {source} ({database_url.rsplit('/', 1)[-1]})", flush=True)
        print(f"target:   tollgate={gateway}/v1", flush=True)
        print(f"key:      tollgate={key}", flush=True)
        print(f"pid:      tollgate={process.pid}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
        await database.drop_database(server, database_url)
        shutil.rmtree(pricing, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--upstream", default="http://127.0.0.1:18000/v1")
    asyncio.run(main(parser.parse_args()))
