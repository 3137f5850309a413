"""holds and usage events

Revision ID: 0002
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ENSURE_PARTITION = """
CREATE FUNCTION ensure_usage_events_partition(month_start date) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    partition_name text := 'usage_events_' || to_char(month_start, 'YYYY_MM');
BEGIN
    IF to_regclass(partition_name) IS NOT NULL THEN
        RETURN;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('usage_events_partitions'));
    IF to_regclass(partition_name) IS NULL THEN
        EXECUTE format(
            'CREATE TABLE %I PARTITION OF usage_events FOR VALUES FROM (%L) TO (%L)',
            partition_name,
            date_trunc('month', month_start)::timestamp AT TIME ZONE 'UTC',
            (date_trunc('month', month_start) + interval '1 month')::timestamp AT TIME ZONE 'UTC'
        );
    END IF;
END
$$
"""


def upgrade() -> None:
    op.create_table(
        "usage_events",
        sa.Column("account_id", sa.Uuid(), nullable=False),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("event_key", sa.Text(), nullable=False),
        sa.Column("api_key_id", sa.Uuid(), nullable=True),
        sa.Column("user", sa.Text(), nullable=True),
        sa.Column("endpoint", sa.Text(), nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cached_tokens", sa.BigInteger(), nullable=False),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=False),
        sa.Column("images", sa.Integer(), nullable=False),
        sa.Column("search_requests", sa.Integer(), nullable=False),
        sa.Column("audio_seconds", sa.Numeric(precision=18, scale=3), nullable=False),
        sa.Column("cost", sa.Numeric(precision=38, scale=12), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("price_version", sa.Text(), nullable=False),
        sa.Column("charge", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("usage_source", sa.Text(), nullable=False),
        sa.Column("outcome", sa.Text(), nullable=False),
        sa.Column(
            "ingested_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("account_id", "time", "id", name=op.f("pk_usage_events")),
        postgresql_partition_by="RANGE (time)",
    )
    op.create_index("ix_usage_events_ingested", "usage_events", ["ingested_at"], unique=False)
    op.create_table(
        "holds",
        sa.Column("account_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("amount", sa.Numeric(precision=38, scale=12), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f("fk_holds_account_id_accounts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("account_id", "id", name=op.f("pk_holds")),
    )
    op.create_index(op.f("ix_holds_expires_at"), "holds", ["expires_at"], unique=False)
    op.add_column(
        "accounts",
        sa.Column(
            "held", sa.Numeric(precision=38, scale=12), server_default=sa.text("0"), nullable=False
        ),
    )
    # Monthly partitions are made on demand (the writer, for back-dated events) and ahead of
    # time (a scheduled job); the advisory lock makes concurrent creation from several
    # processes safe. Bounds are UTC midnights whatever the session's time zone.
    op.execute(ENSURE_PARTITION)
    op.execute(
        "SELECT ensure_usage_events_partition(date_trunc('month', now() AT TIME ZONE 'UTC')::date)"
    )


def downgrade() -> None:
    op.execute("DROP FUNCTION ensure_usage_events_partition(date)")
    op.drop_column("accounts", "held")
    op.drop_index(op.f("ix_holds_expires_at"), table_name="holds")
    op.drop_table("holds")
    op.drop_index("ix_usage_events_ingested", table_name="usage_events")
    op.drop_table("usage_events")
