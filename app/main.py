"""`create_app()`: plugins, routes and lifespan. Wiring only."""

from __future__ import annotations

import asyncio
import hmac
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from litestar import Litestar
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.di import Provide
from litestar.handlers.base import BaseRouteHandler
from litestar.logging.config import LoggingConfig, default_handlers
from litestar.openapi import OpenAPIConfig
from litestar.plugins.prometheus import PrometheusConfig, PrometheusController

from app.accounts.auth import KeyAuthenticator, provide_principal
from app.accounts.routes import get_key
from app.admin.routes import admin_router
from app.config import LogFormat, Settings, load_settings
from app.console.routes import console_router
from app.credits.holds import HoldKeeper
from app.credits.routes import get_account, get_credits
from app.credits.tiers import load_tiers
from app.dashboard.routes import dashboard_router
from app.db import migrate
from app.db.embedded import start_embedded_postgres
from app.db.engine import create_engine, create_sessionmaker, provide_transaction
from app.errors import InvalidApiKey, error_response
from app.gateway import tokens
from app.gateway.observe import Observer
from app.gateway.proxy import Gateway
from app.gateway.routes import ProxyFront, proxy_routes
from app.gateway.upstreams import CircuitBreaker, load_routing, load_upstream_costs
from app.health import healthz
from app.invoices.routes import admin_invoice_routes, invoice_routes
from app.jobs import Scheduler, billing_jobs, default_jobs
from app.limits.service import RateLimiter
from app.logs import JsonFormatter, RecordQueueHandler, lean_records
from app.metering.routes import get_generation, ingest_events
from app.metering.writer import UsageWriter
from app.middleware import add_request_id
from app.notifications.routes import notification_admin_router
from app.notifications.tasks import NotificationWorker
from app.payments import runtime as payments
from app.payments.routes import payment_routes
from app.pricing import load_catalog
from app.pricing.routes import list_models, retrieve_model
from app.usage.routes import usage_routes

logger = logging.getLogger(__name__)


def require_metrics_token(connection: ASGIConnection, _: BaseRouteHandler) -> None:  # type: ignore[type-arg]
    expected: str | None = connection.app.state.settings.metrics_token
    if expected is None:
        return
    scheme, _sep, token = (connection.headers.get("authorization") or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        token.strip().encode(), expected.encode()
    ):
        raise InvalidApiKey("Missing or incorrect metrics token.")


class MetricsController(PrometheusController):
    path = "/metrics"
    guards = [require_metrics_token]  # noqa: RUF012 (litestar reads it from the class)


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or load_settings()
    tiers = load_tiers(settings.pricing_dir / "tiers.toml")
    catalog = load_catalog(settings.pricing_dir)
    router, breaker_policy = load_routing(settings)
    upstream_costs = load_upstream_costs(settings, catalog.currency)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        database_url = settings.database_url
        if database_url is None:
            # Only when the app is started without `tollgate serve`, which does this itself.
            database_url = await asyncio.to_thread(start_embedded_postgres, settings.data_dir)
            await asyncio.to_thread(migrate.upgrade, database_url)
        engine = create_engine(database_url)
        sessionmaker = create_sessionmaker(engine)
        app.state.engine = engine
        app.state.sessionmaker = sessionmaker
        authenticator = KeyAuthenticator(sessionmaker, settings.key_cache_seconds)
        app.state.authenticator = authenticator
        await asyncio.to_thread(tokens.encoding)  # load the tokenizer before the first request
        # aiohttp rather than httpx: measured here (bench/), a third of the CPU per request at
        # concurrency 1 and no collapse of its connection pool at concurrency 32.
        client = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=2000, limit_per_host=0),
            timeout=aiohttp.ClientTimeout(
                total=None,
                sock_connect=settings.upstream_connect_timeout,
                sock_read=settings.upstream_read_timeout,
            ),
            auto_decompress=False,  # bytes are relayed as the upstream sent them
            skip_auto_headers=("User-Agent",),  # the client's own passes through
            # One jar for every customer would send one's upstream cookies with another's
            # requests; none are relayed back either (`_DROP_RESPONSE_HEADERS`).
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        observer = Observer(
            json_logs=settings.log_format is LogFormat.JSON,
            traces=settings.otel_endpoint is not None,
        )
        writer = UsageWriter(
            engine,
            max_batch=settings.writer_max_batch,
            on_commit=lambda charged: payments.auto_recharger(app.state).notify(charged),
        )
        holds = HoldKeeper(
            engine,
            lease_seconds=settings.hold_lease_seconds,
            lease_requests=settings.credit_lease_requests,
        )
        writer.start()
        holds.start()
        app.state.gateway = Gateway(
            settings=settings,
            catalog=catalog,
            router=router,
            client=client,
            authenticator=authenticator,
            holds=holds,
            limiter=RateLimiter(settings.redis_url),
            tiers=tiers,
            writer=writer,
            breaker=CircuitBreaker(breaker_policy),
            upstream_costs=upstream_costs,
            observer=observer,
        )
        notifications = None
        if settings.notifications_enabled:
            notifications = NotificationWorker(sessionmaker, settings)
            notifications.start()
        app.state.notifications = notifications
        scheduler = None
        if settings.scheduler_enabled:
            scheduler = Scheduler(engine, [*default_jobs(), *billing_jobs(app.state)])
            scheduler.start()
        try:
            yield
        finally:
            if scheduler is not None:
                await scheduler.close()
            if notifications is not None:
                await notifications.close()
            # Requests have drained (uvicorn waits for them); flush what they settled.
            await writer.close()
            await payments.shutdown(app.state)
            await holds.close()
            await client.close()
            await engine.dispose()
            observer.close()

    lean_records()
    json_logging: dict[str, Any] = (
        {"formatters": {"standard": {"()": JsonFormatter}}}
        if settings.log_format is LogFormat.JSON
        else {}
    )
    prometheus = PrometheusConfig(
        app_name="tollgate",
        # Every HTTP route's own series; `tollgate_requests_total` is the proxied requests'
        # (SPEC 14, by endpoint, model and status).
        prefix="tollgate_http",
        group_path=True,
        exclude=["/metrics"],
    )
    app = Litestar(
        route_handlers=[
            healthz,
            MetricsController,
            admin_router,
            notification_admin_router,
            get_account,
            get_credits,
            get_key,
            list_models,
            retrieve_model,
            *proxy_routes,
            *usage_routes,
            ingest_events,
            get_generation,
            *payment_routes,
            *invoice_routes,
            admin_invoice_routes,
            dashboard_router,
            console_router,
        ],
        lifespan=[lifespan],
        middleware=[prometheus.middleware],
        before_send=[add_request_id],
        exception_handlers={Exception: error_response},
        logging_config=LoggingConfig(
            **json_logging,
            handlers=_log_handlers(),
            # INFO from these is a line per Stripe call or job run: noise in the gateway's log.
            loggers={name: {"level": "WARNING"} for name in ("httpx", "httpcore", "apscheduler")},
        ),
        dependencies={
            "principal": Provide(provide_principal),
            "db": Provide(provide_transaction),
            "catalog": Provide(lambda: catalog, use_cache=True, sync_to_thread=False),
        },
        state=State({"settings": settings, "tiers": tiers, "catalog": catalog}),
        request_max_body_size=settings.max_request_bytes,
        openapi_config=OpenAPIConfig(title="Tollgate", version="0.1.0", path="/openapi"),
        debug=False,
    )
    # Inside Litestar's entry point (its lifespan, state and before_send hooks apply), outside
    # its middleware and router.
    app.asgi_handler = ProxyFront(app, app.asgi_handler)
    return app


def _log_handlers() -> dict[str, dict[str, Any]]:
    """Litestar's, with the listener's thread formatting the request lines, not the event loop
    (Python 3.11's queue handler; 3.12's is configured differently and left as it is)."""
    if sys.version_info >= (3, 12):
        return default_handlers
    queued = {**default_handlers["queue_listener"]}
    queued["class"] = f"{RecordQueueHandler.__module__}.{RecordQueueHandler.__name__}"
    return {**default_handlers, "queue_listener": queued}
