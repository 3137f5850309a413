"""Settings from the environment (and `.env`), names exactly as SPEC section 2."""

from __future__ import annotations

import site
import sysconfig
from decimal import Decimal
from enum import StrEnum
from functools import cached_property
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PACKAGE_DIR = Path(__file__).resolve().parent


def bundled_dir(name: str) -> Path:
    """The project's top-level `pricing/` or `migrations/`, found from the installed package,
    never from the working directory: beside it in a checkout (an editable install, the Docker
    image), else where a wheel put them, `<prefix>/share/tollgate/` (pyproject's data-files)."""
    if (PACKAGE_DIR.parent / "pyproject.toml").is_file():
        return PACKAGE_DIR.parent / name
    for prefix in (sysconfig.get_path("data"), site.getuserbase()):
        installed = Path(prefix) / "share" / "tollgate" / name
        if installed.is_dir():
            return installed
    return PACKAGE_DIR.parent / name  # not found: start-up names this path


DEFAULT_PRICING_DIR = bundled_dir("pricing")
MIGRATIONS_DIR = bundled_dir("migrations")


class LogFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    database_url: str | None = Field(default=None, validation_alias="DATABASE_URL")
    data_dir: Path = Field(default=Path(".tollgate"), validation_alias="TOLLGATE_DATA_DIR")
    admin_token: str | None = Field(default=None, validation_alias="TOLLGATE_ADMIN_TOKEN")
    pricing_dir: Path = Field(default=DEFAULT_PRICING_DIR, validation_alias="TOLLGATE_PRICING_DIR")

    upstream_base_url: str | None = Field(default=None, validation_alias="UPSTREAM_BASE_URL")
    upstream_api_key: str | None = Field(default=None, validation_alias="UPSTREAM_API_KEY")
    upstreams_file: Path | None = Field(default=None, validation_alias="TOLLGATE_UPSTREAMS_FILE")
    upstream_connect_timeout: float = Field(
        default=5.0, validation_alias="TOLLGATE_UPSTREAM_CONNECT_TIMEOUT"
    )
    upstream_read_timeout: float = Field(
        default=600.0, validation_alias="TOLLGATE_UPSTREAM_READ_TIMEOUT"
    )

    redis_url: str | None = Field(default=None, validation_alias="REDIS_URL")
    smtp_url: str | None = Field(default=None, validation_alias="TOLLGATE_SMTP_URL")
    mail_from: str = Field(
        default="Tollgate <billing@localhost>", validation_alias="TOLLGATE_MAIL_FROM"
    )
    # The delivery worker of the outbox (SPEC 11), on every instance.
    notifications_enabled: bool = Field(default=True, validation_alias="TOLLGATE_NOTIFICATIONS")
    # The first retry after this long, then ×3 each time, for 24 hours.
    notification_retry_seconds: float = Field(
        default=10.0, gt=0, validation_alias="TOLLGATE_NOTIFICATION_RETRY_SECONDS"
    )

    stripe_api_key: str | None = Field(default=None, validation_alias="STRIPE_API_KEY")
    stripe_webhook_secret: str | None = Field(
        default=None, validation_alias="STRIPE_WEBHOOK_SECRET"
    )
    stripe_api_base: str | None = Field(default=None, validation_alias="STRIPE_API_BASE")
    topup_min: Decimal = Field(default=Decimal("5.00"), validation_alias="TOLLGATE_TOPUP_MIN")
    topup_max: Decimal = Field(default=Decimal("10000.00"), validation_alias="TOLLGATE_TOPUP_MAX")

    # Seller details printed on invoices; the address takes `|` between lines.
    seller_name: str = Field(default="Tollgate", validation_alias="TOLLGATE_SELLER_NAME")
    seller_address: str = Field(default="", validation_alias="TOLLGATE_SELLER_ADDRESS")
    seller_vat_id: str | None = Field(default=None, validation_alias="TOLLGATE_SELLER_VAT_ID")
    seller_email: str | None = Field(default=None, validation_alias="TOLLGATE_SELLER_EMAIL")
    # A month is invoiced this long after it ends, so late usage still lands on its invoice.
    invoice_grace_hours: float = Field(
        default=72.0, ge=0, validation_alias="TOLLGATE_INVOICE_GRACE_HOURS"
    )
    auto_recharge_max_per_hour: int = Field(
        default=3, ge=1, validation_alias="TOLLGATE_AUTO_RECHARGE_MAX_PER_HOUR"
    )
    # After a decline; doubles per consecutive decline up to the maximum.
    auto_recharge_backoff_seconds: float = Field(
        default=3600.0, ge=0, validation_alias="TOLLGATE_AUTO_RECHARGE_BACKOFF_SECONDS"
    )
    auto_recharge_backoff_max_seconds: float = Field(
        default=86400.0, ge=0, validation_alias="TOLLGATE_AUTO_RECHARGE_BACKOFF_MAX_SECONDS"
    )

    # Signs the dashboard's session cookies and CSRF tokens. Unset: derived from the admin token,
    # so every instance sharing that token accepts the same sessions; without either, random per
    # process (sessions end on restart).
    session_secret: str | None = Field(default=None, validation_alias="TOLLGATE_SESSION_SECRET")
    # A dashboard sign-in lasts this long, however active the session.
    session_hours: float = Field(
        default=12.0, gt=0, le=24 * 30, validation_alias="TOLLGATE_SESSION_HOURS"
    )

    public_url: str | None = Field(default=None, validation_alias="TOLLGATE_PUBLIC_URL")
    default_max_tokens: int = Field(
        default=4096, ge=1, validation_alias="TOLLGATE_DEFAULT_MAX_TOKENS"
    )
    max_request_bytes: int = Field(
        default=25 * 1024 * 1024, ge=1024, validation_alias="TOLLGATE_MAX_REQUEST_BYTES"
    )
    # How long a revoked key may still authenticate in another process (SPEC: within a second).
    key_cache_seconds: float = Field(
        default=1.0, ge=0, le=1.0, validation_alias="TOLLGATE_KEY_CACHE_SECONDS"
    )
    # How long a hold outlives its process: the owner renews it every lease/4 seconds.
    hold_lease_seconds: float = Field(
        default=60.0, gt=0, validation_alias="TOLLGATE_HOLD_LEASE_SECONDS"
    )
    # A credit lease covers this many holds like the one that found its account busy (the
    # holds of a busy account are then granted in memory); 0 turns credit leases off.
    credit_lease_requests: int = Field(
        default=64, ge=0, le=10_000, validation_alias="TOLLGATE_CREDIT_LEASE_REQUESTS"
    )
    # Settlements per usage commit; 1 turns group commit off (a baseline for benchmarks).
    writer_max_batch: int = Field(default=1000, ge=1, validation_alias="TOLLGATE_WRITER_MAX_BATCH")
    # Required as a bearer token on /metrics when set.
    metrics_token: str | None = Field(default=None, validation_alias="TOLLGATE_METRICS_TOKEN")
    log_format: LogFormat = Field(default=LogFormat.TEXT, validation_alias="TOLLGATE_LOG_FORMAT")
    # Traces (SPEC 14) only when set; the exporter reads the OTEL_* variables itself.
    otel_endpoint: str | None = Field(default=None, validation_alias="OTEL_EXPORTER_OTLP_ENDPOINT")
    host: str = Field(default="127.0.0.1", validation_alias="TOLLGATE_HOST")
    port: int = Field(default=8080, validation_alias="TOLLGATE_PORT")
    scheduler_enabled: bool = Field(default=True, validation_alias="TOLLGATE_SCHEDULER")

    @cached_property
    def resolved_public_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")


def load_settings(**overrides: object) -> Settings:
    return Settings(**overrides)  # type: ignore[arg-type]
