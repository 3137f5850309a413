"""a notice to every instance when an event enters the outbox

The delivery workers (app/notifications/tasks.py) `LISTEN tollgate_outbox` and fan out and
send at once when an event commits, instead of finding it at their next poll; the poll stays,
less often, for retries that fall due and for a listener that is down. A row trigger, so the
settlement's insert of `credit.low` events, which inserts nothing nearly always, pays nothing;
Postgres folds the notices of one transaction (same channel, same empty payload) into one.

Revision ID: 0014
Revises: 0013
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        CREATE FUNCTION tollgate_outbox_event() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('tollgate_outbox', '');
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER outbox_event AFTER INSERT ON notification_events
        FOR EACH ROW EXECUTE FUNCTION tollgate_outbox_event()
        """
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER outbox_event ON notification_events")
    op.execute("DROP FUNCTION tollgate_outbox_event()")
