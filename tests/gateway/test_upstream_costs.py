"""Upstream cost tables (SPEC 13): each event a costed upstream serves stores what the operator
pays it, exactly; the admin usage query reports upstream cost and margin equal to the events,
before and after the rollup job, and the customer's query and generation never show them. The
loader's refusals name the file, the key and the folder."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.gateway.upstreams import (
    UpstreamConfigError,
    UpstreamCosts,
    load_routing,
    load_upstream_costs,
)
from app.pricing import Endpoint, Usage, load_catalog, price
from tests.conftest import ADMIN_TOKEN, Gateways, make_settings, new_account_with_key
from tests.gateway.conftest import FIXTURE_PRICING, events
from tests.support.live import LiveServer
from tests.support.upstream import FakeUpstream
from tests.support.upstream_costs import (
    COMPLETION,
    COST_PER_REQUEST,
    COSTED_MODEL,
    CURRENT_TABLE,
    EXACT_USAGE_USER,
    PLAIN_MODEL,
    PROMPT,
    costed_upstreams,
)
from tests.usage.conftest import roll_up_now

HELLO = [{"role": "user", "content": "Say this is a test!"}]
HEAD = 'currency = "EUR"\neffective_from = 2025-01-01\n'
MARGIN_FIELDS = {"upstream_cost", "margin", "costed_requests"}


def _costs(path: Path, currency: str = "EUR") -> UpstreamCosts:
    settings = make_settings("postgresql://unused", TOLLGATE_UPSTREAMS_FILE=path)
    load_routing(settings)  # the file is a valid upstreams file too
    return load_upstream_costs(settings, currency)


def _today() -> tuple[str, str]:
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return midnight.isoformat(), (midnight + timedelta(days=1)).isoformat()


# ── Loading and pricing ──────────────────────────────────────────────────────────────────────


def test_the_cost_of_usage_is_the_price_at_the_table_in_force_then(tmp_path: Path) -> None:
    costs = _costs(costed_upstreams(tmp_path, "http://127.0.0.1:9/v1"))
    usage = Usage(Endpoint.CHAT, prompt_tokens=PROMPT, completion_tokens=COMPLETION)
    now = datetime.now(UTC)
    assert costs.cost("costed", COSTED_MODEL, now, usage) == COST_PER_REQUEST
    # Exactly the pricing engine's figure for the table (found by its alias).
    table = load_catalog(tmp_path / "costs" / "costed")
    assert price(table.resolve(COSTED_MODEL, now), usage).total == COST_PER_REQUEST
    # The old version, before the current one began.
    assert costs.cost("costed", COSTED_MODEL, datetime(2025, 6, 1, tzinfo=UTC), usage) == Decimal(
        "0.00001"
    )
    # Unknown: an upstream without tables, a model or suffix they don't price, a time before
    # them, an endpoint the model has no price for.
    assert costs.cost("plain", COSTED_MODEL, now, usage) is None
    assert costs.cost(None, COSTED_MODEL, now, usage) is None
    assert costs.cost("costed", PLAIN_MODEL, now, usage) is None
    assert costs.cost("costed", f"{COSTED_MODEL}-online", now, usage) is None
    assert costs.cost("costed", COSTED_MODEL, datetime(2024, 1, 1, tzinfo=UTC), usage) is None
    embedding = Usage(Endpoint.EMBEDDINGS, prompt_tokens=5)
    assert costs.cost("costed", COSTED_MODEL, now, embedding) is None


def test_without_an_upstreams_file_nothing_has_a_cost() -> None:
    settings = make_settings("postgresql://unused")
    assert load_upstream_costs(settings, "EUR") == UpstreamCosts()


def test_default_costs_price_the_upstream_base_url(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "a.toml").write_text(CURRENT_TABLE.format(day="2025-01-01"))
    path = tmp_path / "upstreams.toml"
    path.write_text('default_costs = "mine"\n')
    usage = Usage(Endpoint.CHAT, prompt_tokens=PROMPT, completion_tokens=COMPLETION)
    costs = _costs(path)
    assert costs.cost("default", COSTED_MODEL, datetime.now(UTC), usage) == COST_PER_REQUEST


def _file(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "upstreams.toml"
    path.write_text('[upstreams.a]\nbase_url = "http://127.0.0.1:9/v1"\n' + body)
    return path


@pytest.mark.parametrize(
    ("body", "tables", "message"),
    [
        ('costs = "missing"\n', None, "upstreams.a.costs: .*missing: not a directory"),
        ("costs = 3\n", None, "upstreams.a.costs: expected the name of a folder"),
        ('costs = ""\n', None, "upstreams.a.costs: expected the name of a folder"),
        ('costs = "t"\n', {}, "upstreams.a.costs: .*no rate tables"),
        (
            'costs = "t"\n',
            {"x.toml": f'{HEAD}[models.m]\nowned_by = "o"\n'},
            r"upstreams.a.costs: .*x.toml: models.m: no prices",
        ),
        (
            'costs = "t"\n',
            {"x.toml": f"{HEAD}[models.m]\ninput = 1\n"},
            r"x.toml: models.m.owned_by: missing",
        ),
        (
            'costs = "t"\n',
            {"x.toml": CURRENT_TABLE.format(day="2025-01-01").replace("EUR", "USD")},
            "upstreams.a.costs: the cost tables in .*t are in USD, the rate tables in EUR",
        ),
    ],
    ids=["no-folder", "not-a-string", "empty", "no-tables", "no-prices", "bad-table", "currency"],
)
def test_bad_cost_tables_stop_the_start_naming_what_is_wrong(
    tmp_path: Path, body: str, tables: dict[str, str] | None, message: str
) -> None:
    path = _file(tmp_path, body)
    if tables is not None:
        (tmp_path / "t").mkdir()
        for name, content in tables.items():
            (tmp_path / "t" / name).write_text(content)
    with pytest.raises(UpstreamConfigError, match=message) as raised:
        _costs(path)
    assert str(path) in str(raised.value)


def test_default_costs_and_an_upstream_named_default_conflict(tmp_path: Path) -> None:
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "a.toml").write_text(CURRENT_TABLE.format(day="2025-01-01"))
    path = tmp_path / "upstreams.toml"
    path.write_text(
        'default_costs = "t"\n[upstreams.default]\nbase_url = "http://127.0.0.1:9/v1"\n'
        'costs = "t"\n'
    )
    with pytest.raises(UpstreamConfigError, match="`default_costs` already prices default"):
        _costs(path)


def test_a_gateway_with_bad_cost_tables_does_not_start(gateways: Gateways, tmp_path: Path) -> None:
    path = _file(tmp_path, 'costs = "nowhere"\n')
    with pytest.raises(UpstreamConfigError, match=r"upstreams\.a\.costs"):
        gateways.get(TOLLGATE_UPSTREAMS_FILE=path, TOLLGATE_PRICING_DIR=FIXTURE_PRICING)


# ── Through a live gateway ───────────────────────────────────────────────────────────────────


async def _usage(client: httpx.AsyncClient, path: str, token: str, **body: Any) -> list[Any]:
    response = await client.post(path, json=body, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    rows: list[Any] = response.json()["data"]
    return rows


async def _admin_rows(server: LiveServer, account_id: str) -> dict[str, dict[str, Any]]:
    start, end = _today()
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        rows = await _usage(
            client,
            "/admin/usage/completions",
            ADMIN_TOKEN,
            start_time=start,
            end_time=end,
            group_by=["model"],
            filter_group_by={"user_id": [account_id]},
        )
    return {row["groupBy"]["model"]: row for row in rows}


def _expected(found: list[Any], model: str) -> dict[str, Any]:
    """A model's upstream cost, margin and costed requests, summed over its events."""
    costed = [e for e in found if e.model == model and e.upstream_cost is not None]
    if not costed:
        return {"upstream_cost": None, "margin": None, "costed_requests": 0}
    return {
        "upstream_cost": sum((e.upstream_cost for e in costed), Decimal(0)),
        "margin": sum((e.cost - e.upstream_cost for e in costed), Decimal(0)),
        "costed_requests": len(costed),
    }


def _reported(row: dict[str, Any]) -> dict[str, Any]:
    money = {k: None if row[k] is None else Decimal(row[k]) for k in ("upstream_cost", "margin")}
    return {**money, "costed_requests": row["costed_requests"]}


async def test_events_store_the_upstream_cost_and_the_admin_query_reports_the_margin(
    gateways: Gateways,
    upstream: FakeUpstream,
    admin: httpx.AsyncClient,
    clean_db: AsyncEngine,
    tmp_path: Path,
) -> None:
    upstream.reset()
    server = gateways.get(
        TOLLGATE_UPSTREAMS_FILE=costed_upstreams(tmp_path, upstream.url),
        TOLLGATE_PRICING_DIR=FIXTURE_PRICING,
    )
    account, key = await new_account_with_key(admin, credit="10.00")
    sdk = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)
    ids = []
    for model, stream in [(COSTED_MODEL, False), (COSTED_MODEL, True), (PLAIN_MODEL, False)]:
        raw = await sdk.chat.completions.with_raw_response.create(
            model=model, messages=HELLO, user=EXACT_USAGE_USER, stream=stream
        )
        if stream:
            [chunk async for chunk in raw.parse()]
        ids.append(raw.headers["x-request-id"])
    # An ingested event has no upstream: its upstream cost stays unknown.
    ingested = await admin.post(
        "/admin/events",
        json={
            "events": [
                {
                    "id": uuid.uuid4().hex,
                    "account_id": account["id"],
                    "time": datetime.now(UTC).isoformat(),
                    "model": COSTED_MODEL,
                    "endpoint": "/v1/chat/completions",
                    "prompt_tokens": 1000,
                    "completion_tokens": 500,
                }
            ]
        },
    )
    assert ingested.status_code == 200, ingested.text

    found = await events(clean_db, account["id"])
    by_request = {e.request_id: e for e in found}
    for request_id in ids[:2]:
        event = by_request[request_id]
        assert (event.upstream, event.prompt_tokens, event.completion_tokens) == ("costed", 13, 7)
        assert event.upstream_cost == COST_PER_REQUEST
    assert by_request[ids[2]].upstream == "plain"
    assert by_request[ids[2]].upstream_cost is None
    assert by_request[None].usage_source == "ingested" and by_request[None].upstream_cost is None

    # The admin query: per model and day, the sums over the events, before and after rollups.
    expected = {model: _expected(found, model) for model in (COSTED_MODEL, PLAIN_MODEL)}
    assert expected[COSTED_MODEL] == {
        "upstream_cost": 2 * COST_PER_REQUEST,
        "margin": 2 * (Decimal("0.000004") - COST_PER_REQUEST),  # 20 tokens at €0.20/M, twice
        "costed_requests": 2,
    }
    before = await _admin_rows(server, account["id"])
    assert {m: _reported(r) for m, r in before.items()} == expected
    assert before[COSTED_MODEL]["requests"] == 3  # the ingested one counts in revenue only
    await roll_up_now(clean_db)
    async with clean_db.connect() as connection:
        rolled = await connection.scalar(
            text(
                "SELECT sum(upstream_cost) FROM usage_rollups"
                " WHERE account_id = :id AND bucket_minutes = 15"
            ),
            {"id": account["id"]},
        )
    assert rolled == 2 * COST_PER_REQUEST
    after = await _admin_rows(server, account["id"])
    assert after == before

    # The customer's own query and generation lookup never show what the operator pays.
    start, end = _today()
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        mine = await _usage(
            client,
            "/v1/usage/completions",
            key,
            start_time=start,
            end_time=end,
            group_by=["model"],
        )
        assert {row["groupBy"]["model"] for row in mine} == {COSTED_MODEL, PLAIN_MODEL}
        assert all(not MARGIN_FIELDS & row.keys() for row in mine)
        assert {row["cost"] for row in mine} == {before[m]["cost"] for m in before}
        generation = await client.get(
            f"/v1/generations/{ids[0]}", headers={"Authorization": f"Bearer {key}"}
        )
    assert generation.status_code == 200, generation.text
    assert generation.json()["data"]["upstream"] == "costed"
    assert "upstream_cost" not in generation.text
