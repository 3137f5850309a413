"""drop the ledger's (account_id, created_at) index and api_keys.last_used_at

No query reads ledger entries by time (balances, reconciliation and invoices scan by account or
reference), yet every usage event paid for the index on insert; a key's last use is read from
its usage events, and the column was never written.

Revision ID: 0006
Revises: 0005
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_ledger_entries_account_created", table_name="ledger_entries")
    op.drop_column("api_keys", "last_used_at")


def downgrade() -> None:
    op.add_column("api_keys", sa.Column("last_used_at", sa.DateTime(timezone=True)))
    op.create_index(
        "ix_ledger_entries_account_created", "ledger_entries", ["account_id", "created_at"]
    )
