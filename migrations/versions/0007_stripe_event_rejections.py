"""stripe_events: rejected events, and events whose body jsonb cannot hold

A signed event whose fields are missing, of the wrong type or out of range is stored as
rejected (`rejection` says why) and processed, so the retry job never picks it up again. An
event whose parsed body jsonb cannot store (a NUL character, a lone surrogate, NaN) keeps the
exact signed bytes in `body` instead of `payload`; one without a usable type has none.

Revision ID: 0007
Revises: 0006
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("stripe_events", sa.Column("body", sa.LargeBinary(), nullable=True))
    op.add_column("stripe_events", sa.Column("rejection", sa.Text(), nullable=True))
    op.alter_column("stripe_events", "payload", existing_type=postgresql.JSONB(), nullable=True)
    op.alter_column("stripe_events", "type", existing_type=sa.Text(), nullable=True)
    op.create_check_constraint(
        op.f("ck_stripe_events_kept"),
        "stripe_events",
        "payload IS NOT NULL OR (body IS NOT NULL AND rejection IS NOT NULL)",
    )
    op.create_check_constraint(
        op.f("ck_stripe_events_rejected_is_done"),
        "stripe_events",
        "rejection IS NULL OR processed_at IS NOT NULL",
    )


def downgrade() -> None:
    # Events kept only as bytes have no payload to go back to.
    op.execute("DELETE FROM stripe_events WHERE payload IS NULL")
    op.execute("UPDATE stripe_events SET type = '' WHERE type IS NULL")
    op.drop_constraint(op.f("ck_stripe_events_rejected_is_done"), "stripe_events", type_="check")
    op.drop_constraint(op.f("ck_stripe_events_kept"), "stripe_events", type_="check")
    op.alter_column("stripe_events", "type", existing_type=sa.Text(), nullable=False)
    op.alter_column("stripe_events", "payload", existing_type=postgresql.JSONB(), nullable=False)
    op.drop_column("stripe_events", "rejection")
    op.drop_column("stripe_events", "body")
