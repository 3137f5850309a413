"""The request path's Prometheus metrics (SPEC 14). Label values are bounded: endpoints and
catalog model names, upstream names from the upstreams file, failure reasons from
`UpstreamFailure`; never a value a client sent."""

from __future__ import annotations

import functools
from enum import StrEnum
from typing import Any

from prometheus_client import Counter, Histogram

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

REQUESTS = Counter(
    "tollgate_requests",
    "Proxied requests by endpoint, catalog model and response status",
    ["endpoint", "model", "status"],
)
TOKENS = Counter("tollgate_tokens", "Tokens billed by catalog model and kind", ["model", "kind"])
SPEND = Counter(
    "tollgate_spend", "Amount charged for usage by catalog model", ["model", "currency"]
)
HOLD_SECONDS = Histogram(
    "tollgate_hold_duration_seconds",
    "Time to place a request's credit hold (one statement, batched)",
    buckets=_LATENCY_BUCKETS,
)
SETTLEMENT_SECONDS = Histogram(
    "tollgate_settlement_duration_seconds",
    "Time from handing a settlement to the usage writer to its durable commit",
    buckets=_LATENCY_BUCKETS,
)

UPSTREAM_DURATION = Histogram(
    "tollgate_upstream_duration_seconds",
    "Time from sending a request upstream to its response's status and headers",
    ["upstream"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
UPSTREAM_FAILURES = Counter(
    "tollgate_upstream_failures",
    "Upstream attempts that failed before their response started, by reason",
    ["upstream", "reason"],
)


class UpstreamFailure(StrEnum):
    CONNECTION = "connection"  # refused, reset, DNS: nothing reached the upstream's app
    TIMEOUT = "timeout"  # no status line within the read timeout
    RATE_LIMITED = "rate_limited"  # 429
    SERVER_ERROR = "server_error"  # 5xx

    @classmethod
    def status(cls, status: int) -> UpstreamFailure:
        return cls.RATE_LIMITED if status == 429 else cls.SERVER_ERROR


@functools.cache
def labelled(metric: Any, *values: str) -> Any:
    """`metric.labels(*values)`, looked up once per label set (the sets are bounded, above):
    `labels` validates and locks on every call, a few percent of the request path's CPU."""
    return metric.labels(*values)


def observe_upstream(upstream: str, seconds: float, failure: UpstreamFailure | None = None) -> None:
    labelled(UPSTREAM_DURATION, upstream).observe(seconds)
    if failure is not None:
        labelled(UPSTREAM_FAILURES, upstream, failure.value).inc()
