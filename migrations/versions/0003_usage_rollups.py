"""usage rollups, job state, usage-event indexes for the usage query

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "usage_rollups",
        sa.Column("account_id", sa.Uuid(), nullable=False),
        sa.Column("bucket_minutes", sa.Integer(), nullable=False),
        sa.Column("bucket", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("endpoint", sa.Text(), nullable=False),
        sa.Column("api_key_id", sa.Uuid(), nullable=False),
        sa.Column("user_key", sa.LargeBinary(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("user", sa.Text(), nullable=True),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cached_tokens", sa.BigInteger(), nullable=False),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=False),
        sa.Column("images", sa.BigInteger(), nullable=False),
        sa.Column("search_requests", sa.BigInteger(), nullable=False),
        sa.Column("audio_seconds", sa.Numeric(precision=24, scale=3), nullable=False),
        sa.Column("cost", sa.Numeric(precision=38, scale=12), nullable=False),
        sa.PrimaryKeyConstraint(
            "account_id",
            "bucket_minutes",
            "bucket",
            "model",
            "endpoint",
            "api_key_id",
            "user_key",
            "currency",
            name=op.f("pk_usage_rollups"),
        ),
    )
    op.create_table(
        "job_state",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("watermark", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ran_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("result", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_job_state")),
    )
    # On the partitioned parent: Postgres builds them on every partition, present and future.
    op.create_index(
        "ix_usage_events_account_ingested", "usage_events", ["account_id", "ingested_at"]
    )
    op.create_index("ix_usage_events_time_brin", "usage_events", ["time"], postgresql_using="brin")


def downgrade() -> None:
    op.drop_index("ix_usage_events_time_brin", table_name="usage_events")
    op.drop_index("ix_usage_events_account_ingested", table_name="usage_events")
    op.drop_table("job_state")
    op.drop_table("usage_rollups")
