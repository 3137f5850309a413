"""`tollgate demo`: the whole product on one machine with nothing else running.

An embedded PostgreSQL under TOLLGATE_DATA_DIR, the built-in echo upstream on a loopback
port, the bundled rate tables, and a demo account with €10.00 of granted credit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import socket
import sys
import uuid
from decimal import Decimal

import uvicorn

from app.accounts import repository as accounts_repository
from app.accounts import service as accounts
from app.accounts.schemas import KeyChanges
from app.config import load_settings
from app.credits import service as credits
from app.credits.limits import LimitPeriod, SpendLimit
from app.credits.schemas import LedgerKind
from app.db import migrate
from app.db.embedded import start_embedded_postgres
from app.db.engine import create_engine, create_sessionmaker, unit_of_work

DEMO_CREDIT = "10.00"
DEMO_KEY_LIMIT = SpendLimit(Decimal("5.00"), LimitPeriod.DAY, "UTC")
DEMO_USER_LIMIT = SpendLimit(Decimal("0.50"), LimitPeriod.DAY, "UTC")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _seed(database_url: str, known: uuid.UUID | None) -> tuple[str, str]:
    """The demo account (made once, then found again by id) and a fresh key for this run."""
    engine = create_engine(database_url, pool_size=1)
    try:
        async with unit_of_work(create_sessionmaker(engine)) as session:
            account = await accounts_repository.get_account(session, known) if known else None
            if account is None:
                account = await accounts.create_account(session, name="Demo", email=None)
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
            return str(account.id), plaintext
    finally:
        await engine.dispose()


def _banner(gateway: str, key: str, admin_token: str, account_id: str) -> str:
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

Dashboard: {gateway}/dashboard (sign in with the API key above; its Keys page creates keys
with their own spend limits, models and expiry)

Press Ctrl+C to stop.
"""


def run_demo(*, port: int) -> None:
    from app.demo.echo import create_echo_app
    from app.main import create_app

    base = load_settings()
    data_dir = base.data_dir.expanduser().resolve()
    database_url = start_embedded_postgres(data_dir)
    migrate.upgrade(database_url)
    marker = data_dir / "demo.json"
    known = uuid.UUID(json.loads(marker.read_text())["account_id"]) if marker.exists() else None
    account_id, key = asyncio.run(_seed(database_url, known))
    marker.write_text(json.dumps({"account_id": account_id}))

    echo_port = _free_port()
    admin_token = base.admin_token or f"adm-{secrets.token_urlsafe(24)}"
    settings = load_settings(
        DATABASE_URL=database_url,
        TOLLGATE_ADMIN_TOKEN=admin_token,
        UPSTREAM_BASE_URL=f"http://127.0.0.1:{echo_port}/v1",
        UPSTREAM_API_KEY="demo-upstream-key",
        TOLLGATE_UPSTREAMS_FILE=None,
        TOLLGATE_PORT=port,
    )
    gateway = f"http://127.0.0.1:{port}"

    async def serve() -> None:
        options = {"host": "127.0.0.1", "log_level": "warning", "lifespan": "on"}
        echo = uvicorn.Server(uvicorn.Config(create_echo_app(), port=echo_port, **options))  # type: ignore[arg-type]
        app = uvicorn.Server(uvicorn.Config(create_app(settings), port=port, **options))  # type: ignore[arg-type]
        echo_task = asyncio.create_task(echo.serve())
        app_task = asyncio.create_task(app.serve())
        while not (echo.started and app.started):
            if app_task.done() or echo_task.done():
                break
            await asyncio.sleep(0.05)
        if app.started:
            print(_banner(gateway, key, admin_token, account_id), flush=True)
        await app_task
        echo.should_exit = True
        await echo_task

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())
    sys.stdout.flush()
