"""The delivery worker (SPEC 11), on every instance: fans the outbox out into deliveries and
sends them — webhooks signed per Standard Webhooks, emails over SMTP — retrying each with
exponential back-off for 24 hours. Instances share the work through Postgres: a delivery is
leased by one (`FOR UPDATE SKIP LOCKED`), and an account's deliveries to one endpoint go one
at a time, in order. Sends run as tasks of their own with a 10 s timeout, a bounded number at
once and a few per endpoint, so a slow or dead endpoint holds up only itself; nothing here
runs on the request path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import aiohttp
import asyncpg
from prometheus_client import Counter as Metric
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from standardwebhooks.webhooks import Webhook

from app.config import Settings
from app.db.engine import driver_dsn, unit_of_work
from app.db.job_state import JobName, lock_key
from app.db.models import Account, NotificationDelivery, NotificationEvent, WebhookEndpoint
from app.notifications import repository
from app.notifications.email import SmtpServer, compose
from app.notifications.repository import AttemptResult
from app.notifications.schemas import EMAIL_SUBJECTS, Channel, DeliveryStatus, EventType
from app.notifications.service import webhook_body

logger = logging.getLogger(__name__)

ATTEMPT_TIMEOUT = 10.0  # seconds per webhook request or SMTP session
RETRY_FOR = timedelta(hours=24)
LEASE_SECONDS = 60.0  # longer than an attempt: a lease outlives its send unless the process died
MAX_DELAY = timedelta(hours=6)
DISPATCH_BATCH = 500  # events fanned out per transaction
RECORD_EVERY = 0.02  # seconds: outcomes that finish this close together share a statement
OUTBOX_CHANNEL = "tollgate_outbox"  # notified when an event enters the outbox (0014)
# How often the outbox is read without a notice: for retries falling due, and, more often,
# while the listening connection is down (SPEC 11: an event is sent within 5 s).
POLL_SECONDS = 2.0
UNHEARD_POLL_SECONDS = 0.5
LISTEN_TIMEOUT = 2.0  # a connect that stalls must not hold up the fallback reads for long
LISTEN_RETRY_SECONDS = (1.0, 30.0)  # between failed connects: doubling from the first to the second

DELIVERIES = Metric(
    "tollgate_webhook_deliveries",
    "Webhook delivery attempts by result (succeeded, retrying, failed)",
    ["result"],
)
EMAILS = Metric("tollgate_email_deliveries", "Email delivery attempts by result", ["result"])


def retry_delay(attempts: int, base: float) -> timedelta:
    """After the `attempts`-th failure: base, 3 × base, 9 × base, … at most 6 hours."""
    return min(timedelta(seconds=base * 3 ** (attempts - 1)), MAX_DELAY)


class NotificationWorker:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        settings: Settings,
        *,
        poll_seconds: float = POLL_SECONDS,
        slots: int = 64,
        per_endpoint: int = 4,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._settings = settings
        self._poll = poll_seconds
        self._slots = slots
        self._per_endpoint = per_endpoint
        self._smtp = SmtpServer.from_url(settings.smtp_url) if settings.smtp_url else None
        self._client: aiohttp.ClientSession | None = None
        self._busy: Counter[uuid.UUID] = Counter()  # endpoint → sends in flight here
        self._sends: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._results: list[AttemptResult] = []
        self._recorded = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None
        self._recorder: asyncio.Task[None] | None = None
        self._listener: asyncpg.Connection | None = None
        self._listen_after = 0.0  # monotonic time of the next connect, after failures
        self._listen_backoff = LISTEN_RETRY_SECONDS[0]
        self._unheard = False  # said once in the log per outage

    @property
    def email_on(self) -> bool:
        return self._smtp is not None

    def start(self) -> None:
        self._loop = asyncio.create_task(self._run(), name="notification-worker")
        self._recorder = asyncio.create_task(self._record(), name="notification-recorder")

    def nudge(self) -> None:
        self._wake.set()

    async def close(self) -> None:
        for task in (self._loop, self._recorder):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        # A send cut short is retried after its lease, by this or another instance: shutting
        # down does not wait for a slow endpoint.
        for task in list(self._sends):
            task.cancel()
        if self._sends:
            await asyncio.wait(self._sends, timeout=1)
        if self._client is not None:
            await self._client.close()
        if self._listener is not None:
            self._listener.terminate()
            self._listener = None

    async def _run(self) -> None:
        while True:
            heard = await self._listening()
            self._wake.clear()  # before reading: a notice that comes meanwhile starts another
            try:
                await self.run_once()
            except Exception:
                logger.exception("notification worker failed; retrying")
            poll = self._poll if heard else min(self._poll, UNHEARD_POLL_SECONDS)
            # `asyncio.timeout`, not `wait_for`: on Python 3.11 a `wait_for` whose wait ends
            # as the task is cancelled (a recorded outcome sets `_wake` just as `close` cancels)
            # swallows the cancellation, and `close` then waited for this loop forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(poll):
                    await self._wake.wait()

    async def _listening(self) -> bool:
        """Whether the outbox's notices reach this worker, (re)connecting the listener if not
        (at most once per back-off: a database refusing connections is not asked every round)."""
        if self._listener is not None and not self._listener.is_closed():
            return True
        self._listener = None
        if time.monotonic() < self._listen_after:
            return False
        engine = self._sessionmaker.kw["bind"]
        try:
            listener = await asyncpg.connect(
                driver_dsn(engine),
                timeout=LISTEN_TIMEOUT,
                server_settings={"application_name": "tollgate-outbox"},
            )
            try:
                await listener.add_listener(OUTBOX_CHANNEL, self._noticed)
            except BaseException:
                listener.terminate()
                raise
        except Exception as exc:
            self._listen_after = time.monotonic() + self._listen_backoff
            self._listen_backoff = min(self._listen_backoff * 2, LISTEN_RETRY_SECONDS[1])
            if not self._unheard:
                self._unheard = True
                logger.warning(
                    "outbox notices unheard (%s); reading it every %.1f s",
                    exc,
                    UNHEARD_POLL_SECONDS,
                )
            return False
        listener.add_termination_listener(self._noticed)  # lost: reconnect at the next round
        self._listener = listener
        self._listen_backoff = LISTEN_RETRY_SECONDS[0]
        self._unheard = False
        return True

    def _noticed(self, *_: object) -> None:
        self._wake.set()

    async def run_once(self) -> int:
        """Fan out what is new and start the sends that are due; returns how many started."""
        while True:  # a batch per transaction, until the outbox is drained
            async with unit_of_work(self._sessionmaker) as session:
                events, _ = await repository.dispatch(
                    session,
                    lock=lock_key(JobName.NOTIFICATION_DISPATCH),
                    email_types=[t.value for t in EMAIL_SUBJECTS],
                    email_on=self.email_on,
                    n=DISPATCH_BATCH,
                )
            if events < DISPATCH_BATCH:
                break
        free = self._slots - len(self._sends)
        if free <= 0:
            return 0
        busy = [e for e, n in self._busy.items() if n >= self._per_endpoint]
        async with unit_of_work(self._sessionmaker) as session:
            claimed = await repository.claim(
                session, n=free, busy=busy, lease_seconds=LEASE_SECONDS
            )
        for delivery, event, endpoint in claimed:
            if delivery.endpoint_id is not None:
                self._busy[delivery.endpoint_id] += 1
            task = asyncio.create_task(self._deliver(delivery, event, endpoint))
            self._sends.add(task)
            task.add_done_callback(self._sent)
        return len(claimed)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._sends.discard(task)

    async def _deliver(
        self,
        delivery: NotificationDelivery,
        event: NotificationEvent,
        endpoint: WebhookEndpoint | None,
    ) -> None:
        started = time.perf_counter()
        status_code: int | None = None
        error: str | None = None
        try:
            if delivery.channel == Channel.WEBHOOK:
                if endpoint is None or endpoint.deleted_at is not None:
                    error = "the endpoint was deleted"
                else:
                    status_code = await self._post(endpoint, event)
                    if not 200 <= status_code < 300:
                        error = f"HTTP {status_code}"
            else:
                await self._mail(delivery, event)
        except Exception as exc:  # any failure of one attempt is that attempt's result
            error = f"{type(exc).__name__}: {exc}"[:500] or type(exc).__name__
        finally:
            if delivery.endpoint_id is not None:
                self._busy[delivery.endpoint_id] -= 1
                if self._busy[delivery.endpoint_id] <= 0:
                    del self._busy[delivery.endpoint_id]
        latency_ms = round((time.perf_counter() - started) * 1000)
        now = datetime.now(UTC)
        next_at = None
        if error is None:
            status = DeliveryStatus.SUCCEEDED
        elif endpoint is not None and endpoint.deleted_at is not None:
            status = DeliveryStatus.FAILED
        else:
            next_at = now + retry_delay(
                delivery.attempts, self._settings.notification_retry_seconds
            )
            gone = next_at > delivery.created_at + RETRY_FOR
            status = DeliveryStatus.FAILED if gone else DeliveryStatus.PENDING
        result = "retrying" if status is DeliveryStatus.PENDING else status.value
        (DELIVERIES if delivery.channel == Channel.WEBHOOK else EMAILS).labels(result).inc()
        if error is not None:
            logger.warning(
                "%s delivery %s of %s: attempt %d failed (%s)",
                delivery.channel,
                delivery.id,
                event.id,
                delivery.attempts,
                error,
            )
        self._results.append(
            AttemptResult(
                delivery.account_id,
                delivery.id,
                delivery.attempts,
                status_code,
                latency_ms,
                error,
                status,
                next_at,
            )
        )
        self._recorded.set()

    async def _record(self) -> None:
        """Outcomes written together, one statement for all that finished meanwhile: a
        transaction per delivery would cost more than the sending."""
        while True:
            await self._recorded.wait()
            self._recorded.clear()
            await asyncio.sleep(RECORD_EVERY)
            batch, self._results = self._results, []
            if not batch:
                continue
            try:
                async with unit_of_work(self._sessionmaker) as session:
                    await repository.record_attempts(session, batch)
            except Exception:
                # Unrecorded, a delivery is sent again when its lease ends: at least once.
                logger.exception("recording %d delivery attempts failed", len(batch))
            self._wake.set()  # the accounts' next deliveries may be due now
            retries = [r.next_attempt_at for r in batch if r.next_attempt_at is not None]
            if retries:  # and the soonest retry when it falls due, not at a later poll
                delay = (min(retries) - datetime.now(UTC)).total_seconds()
                if delay < self._poll:
                    asyncio.get_running_loop().call_later(max(0.0, delay), self._wake.set)

    async def _post(self, endpoint: WebhookEndpoint, event: NotificationEvent) -> int:
        body = webhook_body(event)
        sent_at = datetime.now(UTC)
        headers = {
            "content-type": "application/json",
            "user-agent": "Tollgate-Webhooks/1",
            "webhook-id": event.id,
            "webhook-timestamp": str(int(sent_at.timestamp())),
            "webhook-signature": Webhook(endpoint.secret).sign(event.id, sent_at, body.decode()),
        }
        if self._client is None:
            self._client = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=ATTEMPT_TIMEOUT)
            )
        async with self._client.post(endpoint.url, data=body, headers=headers) as response:
            await response.read()
            return response.status

    async def _mail(self, delivery: NotificationDelivery, event: NotificationEvent) -> None:
        if self._smtp is None or delivery.email_to is None:
            raise RuntimeError("email is off (no TOLLGATE_SMTP_URL)")
        type_ = EventType(event.type)
        attachment = None
        async with self._sessionmaker() as session:
            account = await session.get(Account, event.account_id)
            if type_ is EventType.INVOICE_FINALIZED:
                from app.invoices.service import invoice_pdf

                invoice, pdf = await invoice_pdf(
                    session, event.account_id, str(event.data["invoice_id"])
                )
                attachment = (f"{invoice.number}.pdf", pdf)
        message = compose(
            type_,
            event.data,
            sender=self._settings.mail_from,
            to=delivery.email_to,
            account_name=account.name if account else "",
            dashboard_url=f"{self._settings.resolved_public_url}/dashboard",
            message_id=event.id,
            attachment=attachment,
        )
        await self._smtp.send(message, ATTEMPT_TIMEOUT)
