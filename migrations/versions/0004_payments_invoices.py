"""payments (Stripe inbox, customers, payments, auto-recharge) and invoices

Revision ID: 0004
Revises: 0002
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MONEY = sa.Numeric(precision=38, scale=12)


def _created_at(name: str = "created_at") -> sa.Column[Any]:
    return sa.Column(
        name, sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
    )


def _account_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["account_id"],
        ["accounts.id"],
        name=op.f(f"fk_{table}_account_id_accounts"),
        ondelete="CASCADE",
    )


def upgrade() -> None:
    op.create_table(
        "stripe_events",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("payload", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        _created_at("received_at"),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("outcome", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stripe_events")),
    )
    op.create_index(
        "ix_stripe_events_unprocessed",
        "stripe_events",
        ["received_at"],
        postgresql_where=sa.text("processed_at IS NULL"),
    )

    op.create_table(
        "stripe_customers",
        sa.Column("account_id", sa.Uuid(), nullable=False),
        sa.Column("customer_id", sa.Text(), nullable=False),
        sa.Column("payment_method_id", sa.Text(), nullable=True),
        sa.Column("payment_method_saved_at", sa.DateTime(timezone=True), nullable=True),
        _created_at(),
        _account_fk("stripe_customers"),
        sa.PrimaryKeyConstraint("account_id", name=op.f("pk_stripe_customers")),
    )
    op.create_index(op.f("ix_stripe_customers_customer_id"), "stripe_customers", ["customer_id"])

    op.create_table(
        "stripe_payments",
        sa.Column("account_id", sa.Uuid(), nullable=False),
        sa.Column("payment_intent_id", sa.Text(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("checkout_session_id", sa.Text(), nullable=True),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("refunded_minor", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        _created_at(),
        _account_fk("stripe_payments"),
        sa.PrimaryKeyConstraint("account_id", "payment_intent_id", name=op.f("pk_stripe_payments")),
    )
    op.create_index(
        op.f("ix_stripe_payments_payment_intent_id"), "stripe_payments", ["payment_intent_id"]
    )

    op.create_table(
        "auto_recharge_settings",
        sa.Column("account_id", sa.Uuid(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("threshold", MONEY, nullable=False),
        sa.Column("amount", MONEY, nullable=False),
        sa.Column("failures", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("retry_after", sa.DateTime(timezone=True), nullable=True),
        _created_at(),
        _created_at("updated_at"),
        _account_fk("auto_recharge_settings"),
        sa.PrimaryKeyConstraint("account_id", name=op.f("pk_auto_recharge_settings")),
    )

    op.create_table(
        "recharge_attempts",
        sa.Column("account_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("amount", MONEY, nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("customer_id", sa.Text(), nullable=False),
        sa.Column("payment_method_id", sa.Text(), nullable=False),
        sa.Column("payment_intent_id", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        _created_at(),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('pending', 'succeeded', 'failed')",
            name=op.f("ck_recharge_attempts_status"),
        ),
        _account_fk("recharge_attempts"),
        sa.PrimaryKeyConstraint("account_id", "id", name=op.f("pk_recharge_attempts")),
    )
    # At most one attempt in flight per account, enforced by the database.
    op.create_index(
        "uq_recharge_attempts_one_pending",
        "recharge_attempts",
        ["account_id"],
        unique=True,
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.create_index(
        "ix_recharge_attempts_account_created",
        "recharge_attempts",
        ["account_id", "created_at"],
    )

    op.create_table(
        "invoice_counters",
        sa.Column("year", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("last_number", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("year", name=op.f("pk_invoice_counters")),
    )

    op.create_table(
        "invoices",
        sa.Column("account_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("number", sa.Text(), nullable=False),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("period_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("subtotal", MONEY, nullable=False),
        sa.Column("credits_applied", MONEY, nullable=False),
        sa.Column("amount_due", MONEY, nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("usage_cutoff", sa.DateTime(timezone=True), nullable=False),
        sa.Column("customer", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("seller", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.CheckConstraint("status IN ('draft', 'final')", name=op.f("ck_invoices_status")),
        _account_fk("invoices"),
        sa.PrimaryKeyConstraint("account_id", "id", name=op.f("pk_invoices")),
        sa.UniqueConstraint(
            "account_id", "period_start", name=op.f("uq_invoices_account_id_period_start")
        ),
        sa.UniqueConstraint("account_id", "number", name=op.f("uq_invoices_account_id_number")),
    )
    op.create_index("ix_invoices_period_start", "invoices", ["period_start"])

    op.create_table(
        "invoice_lines",
        sa.Column("account_id", sa.Uuid(), nullable=False),
        sa.Column("invoice_id", sa.Uuid(), nullable=False),
        sa.Column("position", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("model", sa.Text(), nullable=True),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("service_month", sa.Date(), nullable=False),
        sa.Column("quantity", sa.BigInteger(), nullable=False),
        sa.Column("unit_price", MONEY, nullable=False),
        sa.Column("per", sa.BigInteger(), nullable=False),
        sa.Column("amount_exact", MONEY, nullable=False),
        sa.Column("amount", MONEY, nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id", "invoice_id"],
            ["invoices.account_id", "invoices.id"],
            name=op.f("fk_invoice_lines_account_id_invoices"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "account_id", "invoice_id", "position", name=op.f("pk_invoice_lines")
        ),
    )


def downgrade() -> None:
    op.drop_table("invoice_lines")
    op.drop_index("ix_invoices_period_start", table_name="invoices")
    op.drop_table("invoices")
    op.drop_table("invoice_counters")
    op.drop_index("ix_recharge_attempts_account_created", table_name="recharge_attempts")
    op.drop_index("uq_recharge_attempts_one_pending", table_name="recharge_attempts")
    op.drop_table("recharge_attempts")
    op.drop_table("auto_recharge_settings")
    op.drop_index(op.f("ix_stripe_payments_payment_intent_id"), table_name="stripe_payments")
    op.drop_table("stripe_payments")
    op.drop_index(op.f("ix_stripe_customers_customer_id"), table_name="stripe_customers")
    op.drop_table("stripe_customers")
    op.drop_index("ix_stripe_events_unprocessed", table_name="stripe_events")
    op.drop_table("stripe_events")
