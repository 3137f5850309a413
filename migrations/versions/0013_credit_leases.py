"""credit leases: a hold an instance keeps for many requests of one account, and a notice to
every instance when an account's terms change

`holds.lease` marks a hold that an instance reserved for the requests of an account it serves
often (app/credits/leases.py): it grants their holds in memory and each settlement shrinks the
lease by its request's part. A lease is renewed, expires and is swept as any hold.

The trigger tells every listening instance (`LISTEN tollgate_accounts`) when a change that must
apply from the next request commits: a suspension, a spend limit, a purchase (the tier). An
instance then stops granting from its lease of that account. The settlement's and the holds'
UPDATEs name none of these columns, so the trigger costs them nothing.

Revision ID: 0013
Revises: 0012
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_CHANGED = " OR ".join(
    f"OLD.{column} IS DISTINCT FROM NEW.{column}"
    for column in ("suspended_at", "key_spend_limits", "user_spend_limit", "total_purchased")
)


def upgrade() -> None:
    op.add_column(
        "holds", sa.Column("lease", sa.Boolean(), nullable=False, server_default=sa.false())
    )
    op.execute(
        """
        CREATE FUNCTION tollgate_account_terms_changed() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('tollgate_accounts', CAST(NEW.id AS text));
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        f"""
        CREATE TRIGGER account_terms_changed
        AFTER UPDATE OF suspended_at, key_spend_limits, user_spend_limit, total_purchased
        ON accounts FOR EACH ROW WHEN ({_CHANGED})
        EXECUTE FUNCTION tollgate_account_terms_changed()
        """
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER account_terms_changed ON accounts")
    op.execute("DROP FUNCTION tollgate_account_terms_changed()")
    op.drop_column("holds", "lease")
