"""what each usage event cost the operator at its upstream (SPEC 13), and its sums in the
rollups, so that margins stay exact without scanning events

`usage_events.upstream_cost` is NULL when not known (no cost tables for that upstream or
model, an ingested event, every event before this revision). A rollup counts only the events
with a known cost in `costed_requests`, `upstream_cost` and `margin` (their cost minus their
upstream cost); every existing bucket holds only events without one, so 0 is exact for it.
Adding a nullable column, or one with a constant default, changes the catalog only: no table
is rewritten, also on a large one.

Revision ID: 0012
Revises: 0011
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_MONEY = sa.Numeric(precision=38, scale=12)


def upgrade() -> None:
    # On the partitioned parent: every partition, present and future, gets it.
    op.add_column("usage_events", sa.Column("upstream_cost", _MONEY))
    op.add_column(
        "usage_rollups",
        sa.Column("costed_requests", sa.BigInteger(), server_default="0", nullable=False),
    )
    op.add_column(
        "usage_rollups", sa.Column("upstream_cost", _MONEY, server_default="0", nullable=False)
    )
    op.add_column("usage_rollups", sa.Column("margin", _MONEY, server_default="0", nullable=False))


def downgrade() -> None:
    op.drop_column("usage_rollups", "margin")
    op.drop_column("usage_rollups", "upstream_cost")
    op.drop_column("usage_rollups", "costed_requests")
    op.drop_column("usage_events", "upstream_cost")
