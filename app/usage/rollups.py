"""The rollup job: folds usage events into 15-minute buckets, catching up from a watermark on
`ingested_at`.

Each run adds the events ingested in [watermark, horizon) to their buckets — a late event to
its old bucket — and moves the watermark to the horizon, in one transaction. A query sums the
rollups and the raw events ingested from the watermark on, in one snapshot, so the answer is
the raw events exactly however far behind the job is. A missed run is never replayed: the next
one simply catches up further. The caller owns the transaction and the job lock.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncConnection

from app.usage import repository

logger = logging.getLogger(__name__)

# Margin for a transaction that has begun (and stamped its events' `ingested_at`) but not yet
# published its start in pg_stat_activity: microseconds in practice.
HORIZON_LAG_SECONDS = 2.0
# A watermark further behind than this means a long-open transaction holds it back; queries
# stay exact but read more raw events, so say so.
STALL_WARNING = timedelta(minutes=10)


@dataclass(frozen=True, slots=True)
class RollupRun:
    since: datetime | None
    until: datetime | None  # the new watermark; None when nothing moved
    events: int
    buckets: int


async def roll_up(
    connection: AsyncConnection, *, lag_seconds: float = HORIZON_LAG_SECONDS
) -> RollupRun:
    # The horizon first: the fold below must start after it was observed.
    horizon = await repository.settled_horizon(connection, lag_seconds)
    since = await repository.rollup_watermark(connection)
    if since is not None and horizon <= since:
        return RollupRun(since, None, 0, 0)
    buckets, events = await repository.fold_events(connection, since, horizon)
    await repository.set_rollup_watermark(connection, horizon)
    lag = datetime.now(horizon.tzinfo) - horizon
    if lag > STALL_WARNING:
        logger.warning(
            "usage rollups are %s behind: a database transaction has been open that long", lag
        )
    return RollupRun(since, horizon, events, buckets)
