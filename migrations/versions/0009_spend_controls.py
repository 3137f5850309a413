"""spend controls (SPEC 3.6, 5): key scope, model allow-lists and expiry; spend limits per key
and per end user with their period counters; account suspension; the audit log

Every new column is nullable or has a constant default: a catalog change only, no rewrite.

Revision ID: 0009
Revises: 0008
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MONEY = sa.Numeric(38, 12)


def upgrade() -> None:
    op.add_column(
        "api_keys", sa.Column("scope", sa.Text(), server_default=sa.text("'full'"), nullable=False)
    )
    op.create_check_constraint("scope", "api_keys", "scope IN ('full', 'inference')")
    op.add_column("api_keys", sa.Column("allowed_models", postgresql.ARRAY(sa.Text())))
    op.add_column("api_keys", sa.Column("expires_at", sa.DateTime(timezone=True)))

    op.add_column(
        "accounts",
        sa.Column(
            "key_spend_limits",
            postgresql.JSONB(),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
    )
    op.add_column("accounts", sa.Column("user_spend_limit", postgresql.JSONB()))
    op.add_column("accounts", sa.Column("low_balance_threshold", MONEY))
    op.add_column("accounts", sa.Column("suspended_at", sa.DateTime(timezone=True)))
    op.add_column("accounts", sa.Column("suspension_reason", sa.Text()))

    op.add_column("holds", sa.Column("api_key_id", sa.Uuid()))
    op.add_column("holds", sa.Column("user", sa.Text()))

    op.create_table(
        "spend_counters",
        sa.Column("account_id", sa.Uuid(), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("spent", MONEY, server_default=sa.text("0"), nullable=False),
        sa.Column("held", MONEY, server_default=sa.text("0"), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f("fk_spend_counters_account_id_accounts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("account_id", "subject", name=op.f("pk_spend_counters")),
    )

    op.create_table(
        "audit_log",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("account_id", sa.Uuid()),
        sa.Column("object_id", sa.Text()),
        sa.Column("before", postgresql.JSONB()),
        sa.Column("after", postgresql.JSONB()),
        sa.Column("client_address", sa.Text()),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    op.create_index("ix_audit_log_at", "audit_log", ["at", "id"])
    op.create_index("ix_audit_log_account", "audit_log", ["account_id", "at"])


def downgrade() -> None:
    op.drop_index("ix_audit_log_account", table_name="audit_log")
    op.drop_index("ix_audit_log_at", table_name="audit_log")
    op.drop_table("audit_log")
    op.drop_table("spend_counters")
    op.drop_column("holds", "user")
    op.drop_column("holds", "api_key_id")
    for column in (
        "suspension_reason",
        "suspended_at",
        "low_balance_threshold",
        "user_spend_limit",
        "key_spend_limits",
    ):
        op.drop_column("accounts", column)
    op.drop_column("api_keys", "expires_at")
    op.drop_column("api_keys", "allowed_models")
    op.drop_constraint("ck_api_keys_scope", "api_keys", type_="check")
    op.drop_column("api_keys", "scope")
