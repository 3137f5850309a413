"""Log lines as JSON objects (`TOLLGATE_LOG_FORMAT=json`), one per line, for log shippers."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

from litestar.logging.standard import QueueListenerHandler


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


class RecordQueueHandler(QueueListenerHandler):
    """Litestar's queue handler without formatting on the caller's thread: the stdlib's
    `prepare` formats every record before queueing it (for queues that pickle), which here put
    the text formatting of each request's line on the event loop. The queue is in process, so
    the listener's thread formats instead."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record

    def setFormatter(self, fmt: logging.Formatter | None) -> None:
        super().setFormatter(fmt)
        for handler in self.listener.handlers:  # they format now
            handler.setFormatter(fmt)
