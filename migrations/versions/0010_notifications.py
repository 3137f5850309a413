"""notifications (SPEC 11): the outbox, webhook endpoints, deliveries and their attempts; an
account's notification settings

Revision ID: 0010
Revises: 0009
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NOW = sa.func.now()


def upgrade() -> None:
    op.add_column(
        "accounts",
        sa.Column("low_balance_armed", sa.Boolean(), server_default=sa.true(), nullable=False),
    )
    op.add_column(
        "accounts",
        sa.Column("depleted_armed", sa.Boolean(), server_default=sa.true(), nullable=False),
    )
    op.add_column(
        "accounts",
        sa.Column(
            "emails_off",
            postgresql.ARRAY(sa.Text()),
            server_default=sa.text("'{}'"),
            nullable=False,
        ),
    )
    op.add_column("spend_counters", sa.Column("notified_period", sa.DateTime(timezone=True)))

    op.create_table(
        "notification_events",
        sa.Column("account_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("seq", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("data", postgresql.JSONB(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.Column("dispatched_at", sa.DateTime(timezone=True)),
        sa.PrimaryKeyConstraint("account_id", "id", name=op.f("pk_notification_events")),
    )
    op.create_index(
        "ix_notification_events_undispatched",
        "notification_events",
        ["seq"],
        postgresql_where=sa.text("dispatched_at IS NULL"),
    )

    op.create_table(
        "webhook_endpoints",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("secret", sa.Text(), nullable=False),
        sa.Column("events", postgresql.ARRAY(sa.Text())),
        sa.Column("description", sa.Text()),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True)),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_endpoints")),
    )

    op.create_table(
        "notification_deliveries",
        sa.Column("account_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("event_id", sa.Text(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("channel", sa.Text(), nullable=False),
        sa.Column("endpoint_id", sa.Uuid()),
        sa.Column("email_to", sa.Text()),
        sa.Column("status", sa.Text(), server_default=sa.text("'pending'"), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column(
            "next_attempt_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False
        ),
        sa.Column("leased_until", sa.DateTime(timezone=True)),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("last_status", sa.Integer()),
        sa.Column("last_error", sa.Text()),
        sa.CheckConstraint(
            "channel IN ('webhook', 'email')", name=op.f("ck_notification_deliveries_channel")
        ),
        sa.CheckConstraint(
            "status IN ('pending', 'succeeded', 'failed')",
            name=op.f("ck_notification_deliveries_status"),
        ),
        sa.PrimaryKeyConstraint("account_id", "id", name=op.f("pk_notification_deliveries")),
        sa.UniqueConstraint(
            "account_id",
            "event_id",
            "channel",
            "endpoint_id",
            name=op.f("uq_notification_deliveries_account_id_event_id_channel_endpoint_id"),
            postgresql_nulls_not_distinct=True,
        ),
    )
    op.create_index(
        "ix_notification_deliveries_due",
        "notification_deliveries",
        ["next_attempt_at"],
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.create_index(
        "ix_notification_deliveries_endpoint",
        "notification_deliveries",
        ["endpoint_id", "created_at"],
    )

    op.create_table(
        "delivery_attempts",
        sa.Column("account_id", sa.Uuid(), nullable=False),
        sa.Column("delivery_id", sa.Uuid(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.Column("status_code", sa.Integer()),
        sa.Column("latency_ms", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text()),
        sa.PrimaryKeyConstraint(
            "account_id", "delivery_id", "attempt", name=op.f("pk_delivery_attempts")
        ),
    )


def downgrade() -> None:
    op.drop_table("delivery_attempts")
    op.drop_index("ix_notification_deliveries_endpoint", table_name="notification_deliveries")
    op.drop_index("ix_notification_deliveries_due", table_name="notification_deliveries")
    op.drop_table("notification_deliveries")
    op.drop_table("webhook_endpoints")
    op.drop_index("ix_notification_events_undispatched", table_name="notification_events")
    op.drop_table("notification_events")
    op.drop_column("spend_counters", "notified_period")
    for column in ("emails_off", "depleted_armed", "low_balance_armed"):
        op.drop_column("accounts", column)
