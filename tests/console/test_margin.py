"""The console's usage page shows revenue, upstream cost and margin by model and day (SPEC 13)
for requests served through an upstream with cost tables, equal to the admin usage query."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai

from app.money import money_str
from tests.conftest import Gateways, new_account_with_key
from tests.console.helpers import client_signed_in
from tests.dashboard.conftest import Dashboard
from tests.gateway.conftest import FIXTURE_PRICING
from tests.support.upstream_costs import (
    COST_PER_REQUEST,
    COSTED_MODEL,
    EXACT_USAGE_USER,
    PLAIN_MODEL,
    costed_upstreams,
)

REVENUE_PER_REQUEST = Decimal("0.000004")  # 13 + 7 tokens of llama-3.1-8b at €0.20/M


async def test_the_usage_page_shows_revenue_upstream_cost_and_margin(
    dashboard: Dashboard,
    operator: httpx.AsyncClient,
    make_operator: Any,
    gateways: Gateways,
    tmp_path: Path,
) -> None:
    server = gateways.get(
        TOLLGATE_UPSTREAMS_FILE=costed_upstreams(tmp_path, dashboard.upstream.url),
        TOLLGATE_PRICING_DIR=FIXTURE_PRICING,
    )
    account, key = await new_account_with_key(operator, name="Margins Ltd", credit="10.00")
    sdk = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)
    for model in (COSTED_MODEL, COSTED_MODEL, PLAIN_MODEL):
        await sdk.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Hi"}], user=EXACT_USAGE_USER
        )
    today = datetime.now(UTC).date()
    answer = await operator.post(
        "/admin/usage/completions",
        json={
            "start_time": f"{today.isoformat()}T00:00:00Z",
            "end_time": f"{(today + timedelta(days=1)).isoformat()}T00:00:00Z",
            "group_by": ["model", "user_id"],
            "filter_group_by": {"user_id": [account["id"]]},
        },
    )
    assert answer.status_code == 200, answer.text
    rows = {r["groupBy"]["model"]: r for r in answer.json()["data"]}
    margin = 2 * (REVENUE_PER_REQUEST - COST_PER_REQUEST)
    assert (rows[COSTED_MODEL]["upstream_cost"], rows[COSTED_MODEL]["margin"]) == (
        money_str(2 * COST_PER_REQUEST),
        money_str(margin),
    )
    assert (rows[PLAIN_MODEL]["upstream_cost"], rows[PLAIN_MODEL]["margin"]) == (None, None)

    token = await make_operator("margins@example.com", "viewer")
    only = {"account": account["id"], "from": today.isoformat(), "to": today.isoformat()}
    async with client_signed_in(dashboard, token, "margins@example.com") as client:
        shown = await client.get("/console/usage", params=only)
        assert shown.status_code == 200, shown.text[:300]
        page = shown.text
        assert 'id="usage-margin-table"' in page and "Upstream cost" in page
        # Exact in the title: the model's line in each table (by model, by model and day, by
        # day and account), and the summary over all three requests; the plain model's none.
        exact = f'title="{money_str(margin)} EUR over 2 of 2 requests"'
        assert page.count(exact) == 3
        summary = f'id="usage-margin-eur" title="{money_str(margin)} EUR over 2 of 3 requests"'
        assert summary in page
        plain = page.split(f'data-model="{PLAIN_MODEL}"')[1].split("</tr>")[0]
        assert plain.count('<td class="num muted">—</td>') == 2
        exported = await client.get("/console/usage.csv", params=only)
    records = list(csv.DictReader(io.StringIO(exported.text)))
    by_model = {r["model"]: r for r in records}
    assert set(by_model) == {COSTED_MODEL, PLAIN_MODEL}
    for model, row in rows.items():
        got = by_model[model]
        assert got["cost"] == row["cost"]
        assert (got["upstream_cost"] or None, got["margin"] or None) == (
            row["upstream_cost"],
            row["margin"],
        )
        assert int(got["costed_requests"]) == row["costed_requests"]
