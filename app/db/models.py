"""Typed ORM models. Each table keyed by account keeps `account_id` in its primary key and its
unique constraints (SPEC 10), so they can be distributed by account later without code changes.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.credits.schemas import LedgerKind
from app.db.base import Base, Money

LEDGER_KINDS = tuple(kind.value for kind in LedgerKind)


class Account(Base):
    __tablename__ = "accounts"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(Text)
    email: Mapped[str | None] = mapped_column(Text)
    currency: Mapped[str] = mapped_column(String(3), server_default=text("'EUR'"))
    # Kept equal to the sum of the account's ledger entries in the same transaction as each
    # entry (SPEC 7); the reconciliation job proves it.
    balance: Mapped[Money] = mapped_column(server_default=text("0"))
    total_purchased: Mapped[Money] = mapped_column(server_default=text("0"))
    total_usage: Mapped[Money] = mapped_column(server_default=text("0"))
    held: Mapped[Money] = mapped_column(server_default=text("0"))
    # Spend limits (SPEC 3.6) as `{"amount", "period", "timezone", "since"}`: per key id, and
    # one applied to each end user separately. On this row, which every credit hold and
    # settlement locks first, so each of them sees the latest limits (app/credits/limits.py).
    key_spend_limits: Mapped[dict[str, dict[str, str]]] = mapped_column(
        JSONB, server_default=text("'{}'::jsonb")
    )
    user_spend_limit: Mapped[dict[str, str] | None] = mapped_column(JSONB(none_as_null=True))
    low_balance_threshold: Mapped[Decimal | None] = mapped_column(Numeric(38, 12))
    suspended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    suspension_reason: Mapped[str | None] = mapped_column(Text)
    # Notifications (SPEC 11): whether `credit.low` / `credit.depleted` may fire again (they
    # fire once per crossing and re-arm when credit is added), and the emails turned off.
    low_balance_armed: Mapped[bool] = mapped_column(server_default=text("true"))
    depleted_armed: Mapped[bool] = mapped_column(server_default=text("true"))
    emails_off: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default=text("'{}'"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class ApiKey(Base):
    """A customer key: only its SHA-256 is stored. Looked up by hash across all accounts, so
    this is a small reference table rather than one distributed by account."""

    __tablename__ = "api_keys"
    __table_args__ = (CheckConstraint("scope IN ('full', 'inference')", name="scope"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    account_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str | None] = mapped_column(Text)
    key_hash: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    prefix: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    scope: Mapped[str] = mapped_column(Text, server_default=text("'full'"))  # KeyScope
    allowed_models: Mapped[list[str] | None] = mapped_column(ARRAY(Text))  # None: all
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class LedgerEntry(Base):
    """Append-only: an entry is never updated or deleted; corrections are new entries."""

    __tablename__ = "ledger_entries"
    __table_args__ = (
        UniqueConstraint("account_id", "reference"),
        Index("ix_ledger_entries_account_created", "account_id", "created_at", "id"),
        CheckConstraint(f"kind IN {LEDGER_KINDS!r}", name="kind"),
    )

    account_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True
    )
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    kind: Mapped[str] = mapped_column(Text)
    amount: Mapped[Money]
    # The idempotency key: a retried write with the same reference is a no-op.
    reference: Mapped[str] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(Text)
    details: Mapped[dict[str, object] | None] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Hold(Base):
    """Credit reserved by one request in flight. The account's `held` column is the sum of its
    holds, moved in the same statements. A hold's owner renews its lease while the request runs;
    a hold whose lease ran out (its process died) is swept and its amount released."""

    __tablename__ = "holds"

    account_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True
    )
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    amount: Mapped[Money]
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    # Whose limits it counts against (SPEC 3.6), so its release finds their counters.
    api_key_id: Mapped[uuid.UUID | None]
    user: Mapped[str | None] = mapped_column(Text)
    # A credit lease (app/credits/leases.py): reserved by an instance for many requests of the
    # account, shrunk by each one's settlement; no key or user (limited requests never use one).
    lease: Mapped[bool] = mapped_column(server_default=text("false"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class SpendCounter(Base):
    """The spend of one limited subject (`key:<id>` or `user:<value>`) in the current period
    of its limit, and the holds in flight against it. Moved only by holds, settlements and
    sweeps (app/credits/repository.py), in the same statements as the account's balance; a new
    period starts when the first hold or event of it arrives. `spent` equals the sum of the
    subject's events in [period_start, period end), which the reconciliation job proves."""

    __tablename__ = "spend_counters"

    account_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True
    )
    subject: Mapped[str] = mapped_column(Text, primary_key=True)
    period_start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    spent: Mapped[Money] = mapped_column(server_default=text("0"))
    held: Mapped[Money] = mapped_column(server_default=text("0"))
    # The period whose `*.limit_reached` was sent: once per period.
    notified_period: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class AuditEntry(Base):
    """One change made through the admin API, the CLI or the console (SPEC 12), written in
    the same transaction as the change. Append-only. Not keyed by account: an operator's
    record, not a customer's."""

    __tablename__ = "audit_log"
    __table_args__ = (
        Index("ix_audit_log_at", "at", "id"),
        Index("ix_audit_log_account", "account_id", "at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    actor: Mapped[str] = mapped_column(Text)
    action: Mapped[str] = mapped_column(Text)
    account_id: Mapped[uuid.UUID | None]
    object_id: Mapped[str | None] = mapped_column(Text)
    before: Mapped[dict[str, object] | None] = mapped_column(JSONB(none_as_null=True))
    after: Mapped[dict[str, object] | None] = mapped_column(JSONB(none_as_null=True))
    client_address: Mapped[str | None] = mapped_column(Text)


class UsageEvent(Base):
    """One metered request (or one ingested event). Partitioned by month of `time`; the
    matching `usage` ledger entry (reference `usage:<event key>`) is its idempotency gate.
    The primary key (account_id, time, id) serves per-account time-range scans."""

    __tablename__ = "usage_events"
    __table_args__ = (
        Index("ix_usage_events_ingested", "ingested_at"),
        Index(
            "ix_usage_events_request",
            "account_id",
            "request_id",
            postgresql_where=text("request_id IS NOT NULL"),
        ),
        {"postgresql_partition_by": "RANGE (time)"},
    )

    account_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    time: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    event_key: Mapped[str] = mapped_column(Text)
    api_key_id: Mapped[uuid.UUID | None]
    user: Mapped[str | None] = mapped_column(Text)
    endpoint: Mapped[str] = mapped_column(Text)
    model: Mapped[str] = mapped_column(Text)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger)
    cached_tokens: Mapped[int] = mapped_column(BigInteger)
    completion_tokens: Mapped[int] = mapped_column(BigInteger)
    images: Mapped[int] = mapped_column(Integer)
    search_requests: Mapped[int] = mapped_column(Integer)
    audio_seconds: Mapped[Decimal] = mapped_column(Numeric(18, 3))
    cost: Mapped[Money]
    currency: Mapped[str] = mapped_column(String(3))
    price_version: Mapped[str] = mapped_column(Text)
    # The itemised charge: kind, quantity, unit price and amount of each line.
    charge: Mapped[list[dict[str, object]]] = mapped_column(JSONB)
    usage_source: Mapped[str] = mapped_column(Text)  # "upstream" | "estimated" | "ingested"
    outcome: Mapped[str] = mapped_column(Text)  # completed | client_disconnected | upstream_error…
    # Of a proxied request (NULL for ingested events): its x-request-id, for
    # GET /v1/generations/{id} (a client may reuse one, so not unique), the upstream that served
    # it and the time from its arrival to its settlement.
    request_id: Mapped[str | None] = mapped_column(Text)
    upstream: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[int | None] = mapped_column(Integer)
    # What the operator paid the upstream for it, from the upstream's cost tables (SPEC 13);
    # NULL when unknown: no tables for that upstream or model, or an ingested event.
    upstream_cost: Mapped[Decimal | None] = mapped_column(Numeric(38, 12))
    ingested_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )


class UsageRollup(Base):
    """Usage events summed per bucket of UTC time — 15 minutes and 1 hour wide, each event in
    one bucket of each width (`bucket_minutes`) — and group. The rollup job folds in every event
    ingested before its watermark (`JobState` "usage_rollups"), late ones included, so rollups
    plus the raw events ingested since always equal the raw events.

    Every key column is NOT NULL so it can be in the primary key: `api_key_id` is the nil UUID
    for events without a key (issued keys are random UUIDs, never nil), and `user_key` stands
    for `user` — empty for no user, else 16 bytes of its SHA-256 — so that an arbitrarily long
    `user` never overflows the index and NULL stays distinct from "".
    """

    __tablename__ = "usage_rollups"

    account_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    bucket_minutes: Mapped[int] = mapped_column(Integer, primary_key=True)
    bucket: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    model: Mapped[str] = mapped_column(Text, primary_key=True)
    endpoint: Mapped[str] = mapped_column(Text, primary_key=True)
    api_key_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    user_key: Mapped[bytes] = mapped_column(LargeBinary, primary_key=True)
    currency: Mapped[str] = mapped_column(String(3), primary_key=True)
    user: Mapped[str | None] = mapped_column(Text)
    requests: Mapped[int] = mapped_column(BigInteger)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger)
    cached_tokens: Mapped[int] = mapped_column(BigInteger)
    completion_tokens: Mapped[int] = mapped_column(BigInteger)
    images: Mapped[int] = mapped_column(BigInteger)
    search_requests: Mapped[int] = mapped_column(BigInteger)
    audio_seconds: Mapped[Decimal] = mapped_column(Numeric(24, 3))
    cost: Mapped[Money]
    # Over the bucket's events whose upstream cost is known (the others count in none of the
    # three): how many, the sum of their upstream costs, and of their cost minus it.
    costed_requests: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    upstream_cost: Mapped[Money] = mapped_column(server_default=text("0"))
    margin: Mapped[Money] = mapped_column(server_default=text("0"))


class JobState(Base):
    """What a scheduled job carries from one run to the next: the rollup watermark, the last
    reconciliation's result. Not keyed by account: one row per job."""

    __tablename__ = "job_state"

    name: Mapped[str] = mapped_column(Text, primary_key=True)
    watermark: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    ran_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    result: Mapped[dict[str, object] | None] = mapped_column(JSONB)


# The fresh part of a usage query: one account's events ingested since the rollup watermark.
Index("ix_usage_events_account_ingested", UsageEvent.account_id, UsageEvent.ingested_at)
# Time-range scans across all accounts (admin queries); events arrive nearly in time order,
# so a BRIN index is tiny and costs the writer almost nothing.
Index("ix_usage_events_time_brin", UsageEvent.time, postgresql_using="brin")


# ── Payments and invoices (issue #6) ─────────────────────────────────────────────────────────
# Imported here so this block can be appended without touching the imports above.
from datetime import date  # noqa: E402

from sqlalchemy import Boolean, Date, ForeignKeyConstraint  # noqa: E402

RECHARGE_STATUSES = ("pending", "succeeded", "failed")
INVOICE_STATUSES = ("draft", "final")


class StripeEvent(Base):
    """The webhook inbox: every verified Stripe event, stored before it is acted on. The
    primary key on Stripe's event id makes re-deliveries (also concurrent ones) no-ops; an
    event stays unprocessed (`processed_at` NULL) until its effects commit, so a failed one is
    retried by the next delivery or the retry job. A global table, not keyed by account.

    A rejected event (fields missing, of the wrong type or out of range) is processed with
    outcome `rejected` and its `rejection` reason, so it is never retried. One whose parsed body
    jsonb cannot hold (a NUL, a lone surrogate, NaN) keeps the exact signed bytes in `body`
    instead of `payload`; one without a usable id is stored under `invalid:<SHA-256 of body>`.
    """

    __tablename__ = "stripe_events"
    __table_args__ = (
        Index(
            "ix_stripe_events_unprocessed",
            "received_at",
            postgresql_where=text("processed_at IS NULL"),
        ),
        CheckConstraint(
            "payload IS NOT NULL OR (body IS NOT NULL AND rejection IS NOT NULL)", name="kept"
        ),
        CheckConstraint("rejection IS NULL OR processed_at IS NOT NULL", name="rejected_is_done"),
    )

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    type: Mapped[str | None] = mapped_column(Text)
    payload: Mapped[dict[str, object] | None] = mapped_column(JSONB(none_as_null=True))
    body: Mapped[bytes | None] = mapped_column(LargeBinary)
    received_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    processed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    outcome: Mapped[str | None] = mapped_column(Text)
    rejection: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    last_error: Mapped[str | None] = mapped_column(Text)


class StripeCustomer(Base):
    """The Stripe Customer of an account (created once, on its first top-up) and the card
    saved by its latest Checkout payment, which auto-recharge charges off-session."""

    __tablename__ = "stripe_customers"

    account_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True
    )
    customer_id: Mapped[str] = mapped_column(Text, index=True)
    payment_method_id: Mapped[str | None] = mapped_column(Text)
    # Stripe's `created` of the payment that saved the card: a late, older event never
    # replaces a newer card.
    payment_method_saved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class StripePayment(Base):
    """One credited Stripe payment (a Checkout top-up or an auto-recharge), by PaymentIntent:
    what refunds and disputes are matched against, and how much of it was reversed."""

    __tablename__ = "stripe_payments"

    account_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True
    )
    payment_intent_id: Mapped[str] = mapped_column(Text, primary_key=True, index=True)
    source: Mapped[str] = mapped_column(Text)  # "checkout" | "auto_recharge"
    checkout_session_id: Mapped[str | None] = mapped_column(Text)
    currency: Mapped[str] = mapped_column(String(3))
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    # Cumulative refunded amount of the charge (Stripe's `amount_refunded`) already debited.
    refunded_minor: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class AutoRechargeSetting(Base):
    """A customer's auto-recharge: when the balance falls below `threshold`, charge `amount`
    to the saved card. `failures` and `retry_after` are the back-off after declines."""

    __tablename__ = "auto_recharge_settings"

    account_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True
    )
    enabled: Mapped[bool] = mapped_column(Boolean)
    threshold: Mapped[Money]
    amount: Mapped[Money]
    failures: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    retry_after: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class RechargeAttempt(Base):
    """One off-session charge attempt. The unique partial index admits at most one pending
    attempt per account, whatever the number of processes deciding at once."""

    __tablename__ = "recharge_attempts"
    __table_args__ = (
        CheckConstraint(f"status IN {RECHARGE_STATUSES!r}", name="status"),
        Index(
            "uq_recharge_attempts_one_pending",
            "account_id",
            unique=True,
            postgresql_where=text("status = 'pending'"),
        ),
        Index("ix_recharge_attempts_account_created", "account_id", "created_at"),
    )

    account_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True
    )
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    amount: Mapped[Money]
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(Text)
    # What was charged, so a resumed attempt repeats exactly the same request (the idempotency
    # key only replays an identical one).
    customer_id: Mapped[str] = mapped_column(Text)
    payment_method_id: Mapped[str] = mapped_column(Text)
    payment_intent_id: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class InvoiceCounter(Base):
    """The last invoice number issued in a year. Taken with a row lock in the transaction that
    inserts the invoice, so numbers are gapless: a rolled-back invoice rolls its number back."""

    __tablename__ = "invoice_counters"

    year: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    last_number: Mapped[int] = mapped_column(Integer)


class Invoice(Base):
    """One account's invoice for one calendar month (UTC). `usage_cutoff` is the ingestion
    bound of the usage it covers: every event of its period or earlier that was ingested before
    the cutoff and not covered by the previous invoice. Later arrivals go on the next one."""

    __tablename__ = "invoices"
    __table_args__ = (
        UniqueConstraint("account_id", "period_start"),
        UniqueConstraint("account_id", "number"),
        CheckConstraint(f"status IN {INVOICE_STATUSES!r}", name="status"),
        Index("ix_invoices_period_start", "period_start"),
    )

    account_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True
    )
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    number: Mapped[str] = mapped_column(Text)
    period_start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    period_end: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(Text)
    subtotal: Mapped[Money]
    credits_applied: Mapped[Money]
    amount_due: Mapped[Money]
    issued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    usage_cutoff: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # Snapshots at issue: an issued invoice never changes when the account or the seller
    # configuration does.
    customer: Mapped[dict[str, object]] = mapped_column(JSONB)
    seller: Mapped[dict[str, object]] = mapped_column(JSONB)


class InvoiceLine(Base):
    """`amount` is `amount_exact` rounded half-up to the currency's minor unit; `unit_price`
    is the table price for `per` units (0.80 per 1,000,000 tokens)."""

    __tablename__ = "invoice_lines"
    __table_args__ = (
        ForeignKeyConstraint(
            ["account_id", "invoice_id"],
            ["invoices.account_id", "invoices.id"],
            ondelete="CASCADE",
        ),
    )

    account_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    invoice_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    description: Mapped[str] = mapped_column(Text)
    model: Mapped[str | None] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(Text)
    # The month the usage belongs to: the invoice's own month, or an earlier one for usage
    # that arrived after that month was invoiced.
    service_month: Mapped[date] = mapped_column(Date)
    quantity: Mapped[int] = mapped_column(BigInteger)
    unit_price: Mapped[Money]
    per: Mapped[int] = mapped_column(BigInteger)
    amount_exact: Mapped[Money]
    amount: Mapped[Money]


# ── Notifications (issue #16, SPEC 11) ───────────────────────────────────────────────────────
DELIVERY_CHANNELS = ("webhook", "email")
DELIVERY_STATUSES = ("pending", "succeeded", "failed")


class NotificationEvent(Base):
    """The outbox: one row per event, written in the transaction of the change that causes it.
    The dispatcher fans it out into deliveries (one per subscribed endpoint, and an email) and
    marks it dispatched; `seq` orders an account's events."""

    __tablename__ = "notification_events"
    __table_args__ = (
        Index(
            "ix_notification_events_undispatched",
            "seq",
            postgresql_where=text("dispatched_at IS NULL"),
        ),
    )

    account_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    id: Mapped[str] = mapped_column(Text, primary_key=True)  # msg_…: the webhook-id
    seq: Mapped[int] = mapped_column(BigInteger, Identity())
    type: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, object]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    dispatched_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class WebhookEndpoint(Base):
    """An operator's endpoint (SPEC 5, 11); `events` None: every type. Deleting keeps the row
    (its deliveries stay listed) and stops new deliveries."""

    __tablename__ = "webhook_endpoints"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    url: Mapped[str] = mapped_column(Text)
    secret: Mapped[str] = mapped_column(Text)
    events: Mapped[list[str] | None] = mapped_column(ARRAY(Text))
    description: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class NotificationDelivery(Base):
    """One event to one endpoint, or to the account's email address, until it succeeds or
    its retries run out. Unique per (event, channel, endpoint), so a fan-out run twice makes
    nothing twice."""

    __tablename__ = "notification_deliveries"
    __table_args__ = (
        UniqueConstraint(
            "account_id",
            "event_id",
            "channel",
            "endpoint_id",
            postgresql_nulls_not_distinct=True,
        ),
        CheckConstraint(f"channel IN {DELIVERY_CHANNELS!r}", name="channel"),
        CheckConstraint(f"status IN {DELIVERY_STATUSES!r}", name="status"),
        Index(
            "ix_notification_deliveries_due",
            "next_attempt_at",
            postgresql_where=text("status = 'pending'"),
        ),
        Index("ix_notification_deliveries_endpoint", "endpoint_id", "created_at"),
    )

    account_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    event_id: Mapped[str] = mapped_column(Text)
    seq: Mapped[int] = mapped_column(BigInteger)  # the event's: order per account
    channel: Mapped[str] = mapped_column(Text)
    endpoint_id: Mapped[uuid.UUID | None]
    email_to: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text, server_default=text("'pending'"))
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    next_attempt_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    leased_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)


class DeliveryAttempt(Base):
    __tablename__ = "delivery_attempts"

    account_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    delivery_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    attempt: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    status_code: Mapped[int | None] = mapped_column(Integer)
    latency_ms: Mapped[int] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)


# ── Operators of the console (issue #17, SPEC 12) ────────────────────────────────────────────
OPERATOR_ROLES = ("viewer", "billing", "admin")


class Operator(Base):
    """Someone who runs the gateway: signs in to `/console` with email and password (argon2id)
    and may do what the role allows. Not keyed by account: the operator's, not a customer's."""

    __tablename__ = "operators"
    __table_args__ = (CheckConstraint(f"role IN {OPERATOR_ROLES!r}", name="role"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    email: Mapped[str] = mapped_column(Text, unique=True)
    role: Mapped[str] = mapped_column(Text)  # OperatorRole
    password_hash: Mapped[str | None] = mapped_column(Text)  # None until the link is used
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    disabled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class OperatorToken(Base):
    """A one-time link to set an operator's password (24 h): only its SHA-256 is stored."""

    __tablename__ = "operator_tokens"

    token_hash: Mapped[bytes] = mapped_column(LargeBinary(32), primary_key=True)
    operator_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("operators.id", ondelete="CASCADE"))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
