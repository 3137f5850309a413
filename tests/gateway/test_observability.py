"""SPEC 14 on a gateway in its own process (so its metrics start at zero): `/metrics` behind its
token with every name and the right values after a known set of requests, one JSON log line per
request with nothing secret in it, and a trace per request received by an OTLP collector on
loopback, with the GenAI attributes, the cost and spans for the hold, upstream and settlement."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import ADMIN_TOKEN, new_account_with_key
from tests.gateway.conftest import FIXTURE_PRICING
from tests.support.live import LiveServer
from tests.support.process import GatewayProcess
from tests.support.upstream import FakeUpstream

HELLO = [{"role": "user", "content": "Say this is a test!"}]
MODEL = "llama-3.1-8b"
METRICS_TOKEN = "metrics-secret"
SPEC_METRICS = (
    "tollgate_requests",
    "tollgate_tokens",
    "tollgate_spend",
    "tollgate_upstream_duration_seconds",
    "tollgate_upstream_failures",
    "tollgate_hold_duration_seconds",
    "tollgate_settlement_duration_seconds",
    "tollgate_webhook_deliveries",
    "tollgate_reconciliation_mismatches",
)


class Collector:
    """An OTLP/HTTP trace receiver: keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[Any] = []
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)

        async def app(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "lifespan":
                while (message := await receive())["type"] != "lifespan.shutdown":
                    await send({"type": "lifespan.startup.complete"})
                await send({"type": "lifespan.shutdown.complete"})
                return
            body = b""
            while True:
                message = await receive()
                body += message.get("body", b"")
                if not message.get("more_body"):
                    break
            if scope["path"] == "/v1/traces":
                export = ExportTraceServiceRequest.FromString(body)
                with self._lock:
                    for resource in export.resource_spans:
                        for scoped in resource.scope_spans:
                            self.spans.extend(scoped.spans)
                    self._arrived.notify_all()
            reply = ExportTraceServiceResponse().SerializeToString()
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"application/x-protobuf")],
                }
            )
            await send({"type": "http.response.body", "body": reply})

        self.server = LiveServer(app)

    def received(self) -> list[Any]:
        with self._lock:
            return list(self.spans)

    async def wait_for(self, count: int) -> list[Any]:
        """The spans once `count` arrived (the exporter sends in batches), or after 10 s."""

        def wait() -> list[Any]:
            with self._arrived:
                self._arrived.wait_for(lambda: len(self.spans) >= count, timeout=10)
                return list(self.spans)

        return await asyncio.to_thread(wait)


def attributes(span: Any) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for item in span.attributes:
        value = item.value
        values[item.key] = getattr(value, value.WhichOneof("value"))
    return values


@pytest.fixture
def collector() -> Iterator[Collector]:
    collector = Collector()
    collector.server.start()
    yield collector
    collector.server.stop()


@pytest.fixture
def observed(
    database_url: str,
    upstream: FakeUpstream,
    collector: Collector,
    clean_db: AsyncEngine,
    tmp_path: Path,
) -> Iterator[GatewayProcess]:
    upstream.reset()
    env = {
        "DATABASE_URL": database_url,
        "TOLLGATE_ADMIN_TOKEN": ADMIN_TOKEN,
        "TOLLGATE_SCHEDULER": "false",
        "TOLLGATE_NOTIFICATIONS": "false",
        "UPSTREAM_BASE_URL": upstream.url,
        "UPSTREAM_API_KEY": "upstream-secret",
        "TOLLGATE_PRICING_DIR": str(FIXTURE_PRICING),
        "TOLLGATE_METRICS_TOKEN": METRICS_TOKEN,
        "TOLLGATE_LOG_FORMAT": "json",
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.server.url,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    process = GatewayProcess(env, log=tmp_path / "gateway.log").start()
    yield process
    process.stop()


async def scrape(url: str, token: str | None = METRICS_TOKEN) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient() as client:
        return await client.get(f"{url}/metrics", headers=headers)


def parse(response: httpx.Response) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    assert response.status_code == 200
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(response.text):
        samples.setdefault(family.name, {})
        for sample in family.samples:
            key = tuple(sorted(sample.labels.items()))
            samples.setdefault(sample.name, {})[key] = sample.value
    return samples


def value(samples: dict[str, Any], name: str, **labels: str) -> float:
    return float(samples.get(name, {}).get(tuple(sorted(labels.items())), 0.0))


async def test_metrics_logs_and_traces_of_a_known_set_of_requests(
    observed: GatewayProcess, collector: Collector, tmp_path: Path
) -> None:
    async with httpx.AsyncClient(
        base_url=observed.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    ) as admin:
        _, key = await new_account_with_key(admin, credit="10.00")
    sdk = openai.AsyncOpenAI(base_url=f"{observed.url}/v1", api_key=key, max_retries=0)
    costs: list[Decimal] = []
    request_ids: list[str] = []
    for _ in range(3):
        raw = await sdk.chat.completions.with_raw_response.create(
            model=MODEL, messages=HELLO, user="behaviour:usage:13:7"
        )
        costs.append(Decimal(raw.headers["x-tollgate-cost"]))
        request_ids.append(raw.headers["x-request-id"])
    stream = await sdk.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=HELLO,
        stream=True,
        user="behaviour:usage:13:7",
        extra_body={"usage": {"include": True}},
    )
    chunks = [chunk async for chunk in stream.parse()]
    costs.append(Decimal(chunks[-1].usage.model_extra["cost"]))  # type: ignore[union-attr]
    request_ids.append(stream.headers["x-request-id"])
    with pytest.raises(openai.NotFoundError):
        await sdk.chat.completions.create(model="no-such-model", messages=HELLO)
    with pytest.raises(openai.InternalServerError):
        await sdk.chat.completions.create(model=MODEL, messages=HELLO, user="behaviour:error-500")

    # /metrics needs its token.
    assert (await scrape(observed.url, None)).status_code == 401
    assert (await scrape(observed.url, "wrong")).status_code == 401
    samples = parse(await scrape(observed.url))
    for name in SPEC_METRICS:
        assert name in samples, name
    chat = {"endpoint": "/v1/chat/completions"}
    assert value(samples, "tollgate_requests_total", **chat, model=MODEL, status="200") == 4
    assert value(samples, "tollgate_requests_total", **chat, model=MODEL, status="500") == 1
    assert value(samples, "tollgate_requests_total", **chat, model="unknown", status="404") == 1
    assert value(samples, "tollgate_tokens_total", model=MODEL, kind="input") == 4 * 13
    assert value(samples, "tollgate_tokens_total", model=MODEL, kind="output") == 4 * 7
    spend = value(samples, "tollgate_spend_total", model=MODEL, currency="EUR")
    assert spend == pytest.approx(float(sum(costs)), rel=1e-9)
    assert value(samples, "tollgate_upstream_duration_seconds_count", upstream="default") == 5
    assert (
        value(
            samples, "tollgate_upstream_failures_total", upstream="default", reason="server_error"
        )
        == 1
    )
    assert value(samples, "tollgate_hold_duration_seconds_count") == 5
    assert value(samples, "tollgate_settlement_duration_seconds_count") == 5
    assert value(samples, "tollgate_reconciliation_mismatches") == 0

    # One JSON line per proxied request, none with the key, the upstream's key or a prompt.
    log = (tmp_path / "gateway.log").read_text()
    assert key not in log and "upstream-secret" not in log and "Say this is a test" not in log
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    requests = [line for line in lines if line.get("logger") == "tollgate.requests"]
    assert len(requests) == 6, requests
    by_id = {line["request_id"]: line for line in requests}
    for request_id, cost in zip(request_ids, costs, strict=True):
        line = by_id[request_id]
        assert line["status"] == 200 and line["model"] == MODEL and line["upstream"] == "default"
        assert Decimal(line["cost"]) == cost and line["currency"] == "EUR"
        assert (line["prompt_tokens"], line["completion_tokens"]) == (13, 7)
        assert line["key"] == key[: len(line["key"])] and 3 < len(line["key"]) < len(key)
        assert line["duration_ms"] >= 0
    assert sorted(line["status"] for line in requests) == [200, 200, 200, 200, 404, 500]

    # A trace per request: the request's span with the GenAI attributes and the cost, and its
    # hold, upstream and settlement spans under it.
    expected = 6 + 5 * 3  # six requests; five got as far as a hold, an upstream, a settlement
    spans = await collector.wait_for(expected)
    assert len(spans) == expected
    roots = {attributes(s).get("tollgate.request_id"): s for s in spans if not s.parent_span_id}
    assert len(roots) == 6
    for request_id, cost in zip(request_ids, costs, strict=True):
        root = roots[request_id]
        found = attributes(root)
        assert root.name == f"chat {MODEL}"
        assert found["gen_ai.operation.name"] == "chat"
        assert found["gen_ai.request.model"] == MODEL
        assert (found["gen_ai.usage.input_tokens"], found["gen_ai.usage.output_tokens"]) == (13, 7)
        assert Decimal(found["tollgate.cost"]) == cost
        children = [s for s in spans if s.trace_id == root.trace_id and s is not root]
        assert sorted(s.name for s in children) == ["credit hold", "settlement", "upstream"]
        assert all(s.parent_span_id == root.span_id for s in children)
