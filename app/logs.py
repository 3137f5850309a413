"""Log lines as JSON objects (`TOLLGATE_LOG_FORMAT=json`), one per line, for log shippers."""

from __future__ import annotations

import atexit
import json
import logging
import queue
import sys
import time
import traceback
from datetime import UTC, datetime
from logging.handlers import QueueHandler, QueueListener
from typing import Any

from litestar.logging._utils import resolve_handlers

# How long the listener lets records gather before it writes them: one wake-up and one write
# per batch, not per request line (each wake-up takes the GIL from the event loop).
BATCH_SECONDS = 0.02


def lean_records() -> None:
    """Leave out of every log record what neither format here shows: its thread and its
    process's id and name (the Logging HOWTO's "Optimization"). `os.getpid()` alone, a system
    call per request line, was about 1 % of the gateway's CPU at concurrency 32."""
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


class JsonFormatter(logging.Formatter):
    """`time`, `level`, `logger`, `message`, and a record's `fields` (the request line's) merged
    in at the top level."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class BatchListener(QueueListener):
    """A queue listener that writes what has gathered in one go: at concurrency 32 the stdlib's
    record-at-a-time listener woke, took the GIL and wrote (and flushed) once per request line,
    about 5 % of the gateway's CPU. A line is written at most `BATCH_SECONDS` after it was
    logged."""

    def _monitor(self) -> None:
        sentinel = getattr(self, "_sentinel", None)  # what `stop` enqueues (not in typeshed)
        pending: queue.Queue[Any] = self.queue  # type: ignore[assignment]
        while True:
            records = [self.dequeue(True)]
            time.sleep(BATCH_SECONDS)
            while True:
                try:
                    records.append(self.dequeue(False))
                except queue.Empty:
                    break
            stop = sentinel in records
            try:
                self._write([r for r in records if r is not sentinel])
            except Exception:  # never let the thread end: the queue would grow, unwritten
                traceback.print_exc(file=sys.stderr)
            for _ in records:
                pending.task_done()
            if stop:
                return

    def stop(self) -> None:
        if self._thread is not None:  # also at exit, after a stop of its own
            super().stop()

    def _write(self, records: list[logging.LogRecord]) -> None:
        for handler in self.handlers:
            mine = [
                r for r in records if not self.respect_handler_level or r.levelno >= handler.level
            ]
            if type(handler) is not logging.StreamHandler:
                for record in mine:
                    handler.handle(record)
                continue
            lines, written = [], []
            for record in mine:
                if handler.filter(record):
                    try:
                        lines.append(handler.format(record) + handler.terminator)
                        written.append(record)
                    except Exception:
                        handler.handleError(record)
            if lines:
                with handler.lock:  # type: ignore[union-attr]
                    try:
                        handler.stream.write("".join(lines))
                        handler.flush()
                    except Exception:
                        handler.handleError(written[-1])


class RecordQueueHandler(QueueHandler):
    """Litestar's queue handler without formatting on the caller's thread: the stdlib's
    `prepare` formats every record before queueing it (for queues that pickle), which here put
    the text formatting of each request's line on the event loop. The queue is in process, so
    the listener's thread formats instead, in batches (`BatchListener`)."""

    def __init__(self, handlers: list[Any] | None = None) -> None:
        # As Litestar's `QueueListenerHandler`, which the logging config names this in place of.
        super().__init__(queue.Queue(-1))
        resolved = resolve_handlers(handlers) if handlers else [logging.StreamHandler()]
        self.listener = BatchListener(self.queue, *resolved)
        self.listener.start()
        atexit.register(self.listener.stop)

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record

    def setFormatter(self, fmt: logging.Formatter | None) -> None:
        super().setFormatter(fmt)
        for handler in self.listener.handlers:  # they format now
            handler.setFormatter(fmt)
