"""The webhook inbox: store a verified event, then act on it exactly once.

1. The event is inserted (unique on its id) and committed before anything else happens, so a
   verified event is never lost, even if acting on it fails.
2. In a second transaction the event row is locked while unprocessed; its effects and its
   `processed_at` commit together. A concurrent re-delivery waits on that lock and then finds
   the event processed; a failed attempt leaves it unprocessed for the next delivery or for
   `retry_unprocessed_events`.
3. Stripe does not order events: a refund or dispute may arrive before the purchase it
   reverses is credited. Such an event is answered 200 but stays unprocessed, and the retry
   job tries it again until `WAIT_FOR_PAYMENT` has passed since it arrived (then it is a
   payment Tollgate never credited, e.g. another product's on the same Stripe account).
4. An event no money may come from (a field missing, of the wrong type or out of range; text
   Postgres cannot hold; a body that is no event at all) is stored as rejected, with its
   reason: processed, so never retried, and answered 2xx so Stripe stops re-sending it. What
   is wrong with the body is found on receipt, what is wrong with the fields an event type
   needs when it is applied (then its effects are rolled back to a savepoint first).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db.engine import unit_of_work
from app.payments import repository, webhook
from app.payments.config import BillingConfig
from app.payments.events import MalformedStripeData, Outcome, ReceivedEvent

logger = logging.getLogger(__name__)

WAIT_FOR_PAYMENT = timedelta(hours=24)


@dataclass(frozen=True, slots=True)
class Receipt:
    event_id: str
    duplicate: bool
    outcome: Outcome | None


async def receive_event(
    sessionmaker: async_sessionmaker[AsyncSession], event: ReceivedEvent, config: BillingConfig
) -> Receipt:
    async with unit_of_work(sessionmaker) as session:
        stored = await repository.insert_event(session, event)
    if event.rejection is not None:
        if stored:
            logger.warning("stripe event %s rejected: %s", event.id, event.rejection)
        return Receipt(event.id, duplicate=not stored, outcome=Outcome.REJECTED if stored else None)
    outcome = await process_event(sessionmaker, event.id, config)
    # A duplicate is a delivery that found the event already handled (by an earlier or a
    # concurrent delivery), whether or not it was the one that stored it.
    return Receipt(event_id=event.id, duplicate=outcome is None, outcome=outcome)


async def process_event(
    sessionmaker: async_sessionmaker[AsyncSession], event_id: str, config: BillingConfig
) -> Outcome | None:
    """Act on a stored event if nobody has; its outcome, or None if it was already done."""
    try:
        async with unit_of_work(sessionmaker) as session:
            stored = await repository.lock_unprocessed_event(session, event_id)
            if stored is None:
                return None
            try:
                async with session.begin_nested():
                    if stored.payload is None:  # only ever stored so when rejected
                        raise MalformedStripeData("the event was stored without its payload")
                    outcome = await webhook.apply_event(session, stored.payload, config)
            except MalformedStripeData as exc:
                await repository.reject_event(session, event_id, exc.reason)
                logger.warning("stripe event %s rejected: %s", event_id, exc.reason)
                return Outcome.REJECTED
            arrived = datetime.now(UTC) - stored.received_at
            if outcome == Outcome.UNKNOWN_PAYMENT and arrived < WAIT_FOR_PAYMENT:
                await repository.record_event_failure(
                    session, event_id, "its payment is not credited yet"
                )
                outcome = Outcome.WAITING_FOR_PAYMENT
            else:
                await repository.mark_event_processed(session, event_id, outcome)
    except Exception as exc:
        async with unit_of_work(sessionmaker) as session:
            await repository.record_event_failure(session, event_id, repr(exc))
        raise
    logger.info("stripe event %s: %s", event_id, outcome)
    return outcome


async def retry_unprocessed_events(
    sessionmaker: async_sessionmaker[AsyncSession],
    config: BillingConfig,
    *,
    received_before: timedelta = timedelta(minutes=1),
) -> int:
    """Job body: act on stored events whose processing failed (e.g. the database went away
    mid-way). Returns how many were processed now."""
    async with unit_of_work(sessionmaker) as session:
        event_ids = await repository.unprocessed_event_ids(session, received_before=received_before)
    done = 0
    for event_id in event_ids:
        try:
            if await process_event(sessionmaker, event_id, config) is not None:
                done += 1
        except Exception:
            logger.exception("stripe event %s failed again", event_id)
    return done
