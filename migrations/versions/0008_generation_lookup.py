"""usage events remember the request they metered: its request id (for
`GET /v1/generations/{id}`), the upstream that served it and how long it took

Adding nullable columns is a catalog change only (no table rewrite, also on a large table);
the index is built per partition.

Revision ID: 0008
Revises: 0007
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("usage_events", sa.Column("request_id", sa.Text()))
    op.add_column("usage_events", sa.Column("upstream", sa.Text()))
    op.add_column("usage_events", sa.Column("duration_ms", sa.Integer()))
    op.create_index(
        "ix_usage_events_request",
        "usage_events",
        ["account_id", "request_id"],
        postgresql_where=sa.text("request_id IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_usage_events_request", table_name="usage_events")
    op.drop_column("usage_events", "duration_ms")
    op.drop_column("usage_events", "upstream")
    op.drop_column("usage_events", "request_id")
