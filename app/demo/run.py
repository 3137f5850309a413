"""`tollgate demo`: the whole product on one machine with nothing else running.

An embedded PostgreSQL under TOLLGATE_DATA_DIR, the built-in echo upstream on a loopback
port, the bundled rate tables, and a demo account with €10.00 of granted credit.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import sys
import uuid
from decimal import Decimal

import uvicorn
from sqlalchemy import select

from app.accounts import repository as accounts_repository
from app.accounts import service as accounts
from app.accounts.schemas import KeyChanges
from app.config import load_settings
from app.console import operators
from app.console.schemas import OperatorRole
from app.credits import service as credits
from app.credits.limits import LimitPeriod, SpendLimit
from app.credits.schemas import LedgerKind
from app.db import migrate
from app.db.embedded import start_embedded_postgres, stop_embedded_postgres
from app.db.engine import create_engine, create_sessionmaker, unit_of_work
from app.db.models import Operator
from app.notifications import repository as notification_repository
from app.notifications import service as notifications
from app.notifications.schemas import CreateEndpoint
from app.server import DRAIN_SECONDS, Server, Shutdown

DEMO_CREDIT = "10.00"
DEMO_KEY_LIMIT = SpendLimit(Decimal("5.00"), LimitPeriod.DAY, "UTC")
DEMO_USER_LIMIT = SpendLimit(Decimal("0.50"), LimitPeriod.DAY, "UTC")
DEMO_LOW_BALANCE = Decimal("9.99")
DEMO_OPERATOR = "demo@tollgate.local"  # `credit.low` after the first cent of usage


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _seed(
    database_url: str, known: dict[str, str], sink_url: str, gateway_url: str
) -> tuple[str, str, dict[str, str]]:
    """The demo account and its webhook endpoint (made once, then found again by id), pointed
    at this run's sink, and a fresh key for this run; returns what to remember."""
    engine = create_engine(database_url, pool_size=1)
    try:
        async with unit_of_work(create_sessionmaker(engine)) as session:
            known_id = known.get("account_id")
            account = (
                await accounts_repository.get_account(session, uuid.UUID(known_id))
                if known_id
                else None
            )
            if account is None:
                account = await accounts.create_account(session, name="Demo", email=None)
                account.low_balance_threshold = DEMO_LOW_BALANCE
            endpoint = None
            if known.get("webhook_endpoint_id"):
                endpoint = await notification_repository.get_endpoint(
                    session, uuid.UUID(known["webhook_endpoint_id"])
                )
            if endpoint is None:
                endpoint, _ = await notifications.create_endpoint(
                    session, CreateEndpoint(url=sink_url, description="the demo's sink")
                )
            endpoint.url = sink_url
            await credits.add_credit(
                session,
                account.id,
                amount=Decimal(DEMO_CREDIT),
                kind=LedgerKind.GRANT,
                reference="demo-welcome-credit",
                description="Demo credit",
            )
            # Spend controls to see at once: a daily limit on the demo key (`GET /v1/key`) and
            # one per end user (each `user` of a request).
            locked = await credits.lock_account(session, account.id)
            await credits.set_user_limit(session, locked, DEMO_USER_LIMIT)
            _, plaintext = await accounts.issue_key(
                session, account.id, changes=KeyChanges(name="demo", spend_limit=DEMO_KEY_LIMIT)
            )
            # The console's demo operator, and a fresh one-time link to set its password.
            staff = await session.scalar(select(Operator).where(Operator.email == DEMO_OPERATOR))
            if staff is None:
                staff, link = await operators.create_operator(
                    session, DEMO_OPERATOR, OperatorRole.ADMIN, gateway_url
                )
            else:
                link = await operators.new_link(session, staff, gateway_url)
            while "tg-" in link:  # no printed token but the API key starts with tg-
                link = await operators.new_link(session, staff, gateway_url)
            remembered = {
                "account_id": str(account.id),
                "webhook_endpoint_id": str(endpoint.id),
                "webhook_secret": endpoint.secret,
            }
            return str(account.id), plaintext, {**remembered, "console_link": link}
    finally:
        await engine.dispose()


def _banner(
    gateway: str, key: str, admin_token: str, account_id: str, sink: str, console_link: str
) -> str:
    return f"""Gateway: {gateway}
API key: {key}
Admin token: {admin_token}
Demo account: {account_id} (€{DEMO_CREDIT} of credit; upstream: built-in echo model)

Try it:

  curl {gateway}/v1/chat/completions \\
    -H "Authorization: Bearer {key}" \\
    -H "Content-Type: application/json" \\
    -d '{{"model": "llama-3.3-70b", "messages": [{{"role": "user", "content": "Hi!"}}]}}'

  curl {gateway}/v1/account -H "Authorization: Bearer {key}"

Every non-stream response says what it cost (header x-tollgate-cost); add "usage":
{{"include": true}} to a request for the cost in its usage (streams too), and look a request up
later by its x-request-id:

  curl {gateway}/v1/generations/<x-request-id> -H "Authorization: Bearer {key}"

  python - <<'PY'
  from openai import OpenAI
  client = OpenAI(base_url="{gateway}/v1", api_key="{key}")
  reply = client.chat.completions.create(
      model="llama-3.3-70b-online",
      messages=[{{"role": "user", "content": "How rich is Jeff Bezos?"}}],
  )
  print(reply.choices[0].message.content, reply.usage)
  PY

Spend controls: this key may spend €{DEMO_KEY_LIMIT.amount} a day, and each end user (a
request's "user") €{DEMO_USER_LIMIT.amount} a day; past either, a 402 says when it resets:

  curl {gateway}/v1/key -H "Authorization: Bearer {key}"

Notifications: the account's events (a limit reached, low credit, a payment) go out as
signed webhooks; this demo receives them itself and lists them at {sink}/ — e.g. an end
user's request that could cost more than its €{DEMO_USER_LIMIT.amount}:

  curl {gateway}/v1/chat/completions \\
    -H "Authorization: Bearer {key}" -H "Content-Type: application/json" \\
    -d '{{"model": "llama-3.3-70b", "user": "alice", "max_tokens": 1000000,
         "messages": [{{"role": "user", "content": "Hi!"}}]}}'

Dashboard: {gateway}/dashboard (sign in with the API key above; its Keys page creates keys
with their own spend limits, models and expiry)

Console: {gateway}/console for operators. Set the password of {DEMO_OPERATOR} (admin) with
this one-time link, then sign in with it:

  {console_link}

Operators' metrics (requests, tokens and spend by model, upstream latency and failures, hold
and settlement latency) for Prometheus: {gateway}/metrics; every request also logs one line
(TOLLGATE_LOG_FORMAT=json for JSON).

Press Ctrl+C (or send SIGTERM) to stop; everything the demo started stops with it.
"""


def run_demo(*, port: int) -> None:
    """Until SIGINT or SIGTERM (the same for both): then the gateway drains and stops, then the
    echo upstream and the webhook sink, then the embedded PostgreSQL; a second signal stops the
    servers at once, and the database still stops."""
    with Shutdown() as shutdown:
        try:
            _run_demo(port, shutdown)
        finally:
            stop_embedded_postgres()
    sys.stdout.flush()


def _run_demo(port: int, shutdown: Shutdown) -> None:
    from app.demo.echo import create_echo_app
    from app.demo.sink import create_sink_app
    from app.main import create_app

    base = load_settings()
    data_dir = base.data_dir.expanduser().resolve()
    database_url = start_embedded_postgres(data_dir)
    migrate.upgrade(database_url)
    marker = data_dir / "demo.json"
    known: dict[str, str] = json.loads(marker.read_text()) if marker.exists() else {}
    echo_port, sink_port = _free_port(), _free_port()
    sink = f"http://127.0.0.1:{sink_port}"
    gateway = f"http://127.0.0.1:{port}"
    account_id, key, remembered = asyncio.run(
        _seed(database_url, known, f"{sink}/webhooks", gateway)
    )
    console_link = remembered.pop("console_link")
    marker.write_text(json.dumps(remembered))
    if shutdown.requested:
        return

    admin_token = base.admin_token or f"adm-{secrets.token_urlsafe(24)}"
    settings = load_settings(
        DATABASE_URL=database_url,
        TOLLGATE_ADMIN_TOKEN=admin_token,
        UPSTREAM_BASE_URL=f"http://127.0.0.1:{echo_port}/v1",
        UPSTREAM_API_KEY="demo-upstream-key",
        TOLLGATE_UPSTREAMS_FILE=None,
        TOLLGATE_PORT=port,
    )

    async def serve() -> None:
        options = {"host": "127.0.0.1", "log_level": "warning", "lifespan": "on"}
        echo = Server(uvicorn.Config(create_echo_app(), port=echo_port, **options))  # type: ignore[arg-type]
        receiver = create_sink_app(remembered["webhook_secret"])
        sink_server = Server(
            uvicorn.Config(
                receiver, port=sink_port, host="127.0.0.1", log_level="warning", lifespan="off"
            )
        )
        app = Server(
            uvicorn.Config(
                create_app(settings),
                port=port,
                timeout_graceful_shutdown=DRAIN_SECONDS,
                **options,  # type: ignore[arg-type]
            )
        )
        # The gateway stops first: its shutdown may still call the upstream or send webhooks.
        shutdown.watch(app, echo, sink_server)
        echo_task = asyncio.create_task(echo.serve())
        sink_task = asyncio.create_task(sink_server.serve())
        app_task = asyncio.create_task(app.serve())
        while not (echo.started and app.started and sink_server.started):
            if app_task.done() or echo_task.done() or sink_task.done():
                break
            await asyncio.sleep(0.05)
        if app.started and not shutdown.requested:
            print(_banner(gateway, key, admin_token, account_id, sink, console_link), flush=True)
        try:
            await app_task
        finally:
            echo.should_exit = sink_server.should_exit = True
            await asyncio.gather(echo_task, sink_task, return_exceptions=True)

    asyncio.run(serve())
