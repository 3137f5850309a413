"""partition creation safe under concurrent callers; joins the two heads (0003, 0004)

`ensure_usage_events_partition` checked for the partition again after taking its advisory
lock, but an advisory lock does not make the backend read catalog changes committed while it
waited, so a caller that queued behind the creator still saw no partition and failed creating
it ("relation already exists"). It now treats that error as success.

Revision ID: 0005
Revises: 0003, 0004
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | tuple[str, ...] | None = ("0003", "0004")
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_FUNCTION = """
CREATE OR REPLACE FUNCTION ensure_usage_events_partition(month_start date) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    partition_name text := 'usage_events_' || to_char(month_start, 'YYYY_MM');
BEGIN
    IF to_regclass(partition_name) IS NOT NULL THEN
        RETURN;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('usage_events_partitions'));
    {create}
END
$$
"""

_CREATE_TABLE = """
        EXECUTE format(
            'CREATE TABLE %I PARTITION OF usage_events FOR VALUES FROM (%L) TO (%L)',
            partition_name,
            date_trunc('month', month_start)::timestamp AT TIME ZONE 'UTC',
            (date_trunc('month', month_start) + interval '1 month')::timestamp AT TIME ZONE 'UTC'
        );"""

_CREATE = _FUNCTION.format(
    create=f"""BEGIN{_CREATE_TABLE}
    EXCEPTION WHEN duplicate_table THEN
        NULL;  -- made by the caller this one waited for
    END;"""
)
# 0002's version, restored on downgrade.
_PREVIOUS = _FUNCTION.format(
    create=f"""IF to_regclass(partition_name) IS NULL THEN{_CREATE_TABLE}
    END IF;"""
)


def upgrade() -> None:
    op.execute(_CREATE)


def downgrade() -> None:
    op.execute(_PREVIOUS)
