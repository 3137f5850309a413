"""The rollup job: folds usage events into 15-minute buckets, catching up from a watermark on
`ingested_at`.

Each run adds the events ingested in [watermark, horizon) to their buckets — a late event to
its old bucket — and moves the watermark to the horizon, in one transaction. A query sums the
rollups and the raw events ingested from the watermark on, in one snapshot, so the answer is
the raw events exactly however far behind the job is. A missed run is never replayed: the next
one simply catches up further. The caller owns the transaction and the job lock.

A run folds at most about `CATCH_UP_EVENTS` events (never part of one transaction's events):
a large backlog (a first run over imported history, a long outage) is caught up in a series
of short transactions, each committing its progress, rather than one that holds its locks
for minutes and starts over if interrupted. The job repeats runs until it is caught up.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from app.db import job_state
from app.db.job_state import JobName
from app.usage import repository

logger = logging.getLogger(__name__)

# Margin for a transaction that has begun (and stamped its events' `ingested_at`) but not yet
# published its start in pg_stat_activity: microseconds in practice.
HORIZON_LAG_SECONDS = 2.0
# A watermark further behind than this means a long-open transaction holds it back; queries
# stay exact but read more raw events, so say so.
STALL_WARNING = timedelta(minutes=10)
# Events per run: measured here, about 5 s of folding.
CATCH_UP_EVENTS = 200_000


@dataclass(frozen=True, slots=True)
class RollupRun:
    since: datetime | None
    until: datetime | None  # the new watermark; None when nothing moved
    events: int
    buckets: int
    caught_up: bool = True  # False: stopped at `CATCH_UP_EVENTS`, more is waiting


def behind(run: object) -> bool:
    """Whether the job should run again at once (its `Job.again`)."""
    return isinstance(run, RollupRun) and not run.caught_up


async def roll_up(
    session: AsyncSession,
    *,
    lag_seconds: float = HORIZON_LAG_SECONDS,
    max_events: int = CATCH_UP_EVENTS,
) -> RollupRun:
    # The horizon first: the fold below must start after it was observed.
    horizon, now = await job_state.settled_horizon(session, lag_seconds)
    since = await job_state.watermark(session, JobName.USAGE_ROLLUPS)
    if since is not None and horizon <= since:
        return RollupRun(since, None, 0, 0)
    bound = await repository.fold_bound(session, since, max_events)
    until = horizon if bound is None else min(bound, horizon)
    buckets, events = await repository.fold_events(session, since, until)
    await job_state.set_watermark(session, JobName.USAGE_ROLLUPS, until)
    lag = now - horizon
    if lag > STALL_WARNING:
        logger.warning(
            "usage rollups are %s behind: a database transaction has been open that long", lag
        )
    return RollupRun(since, until, events, buckets, caught_up=until == horizon)
