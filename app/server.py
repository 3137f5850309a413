"""Run the ASGI app under uvicorn, with a drain period on SIGTERM, and the process's shutdown.

On SIGINT or SIGTERM uvicorn stops accepting connections, lets running requests (streams
included) finish for up to `DRAIN_SECONDS`, then runs the app's shutdown, which flushes the usage
writer. Both signals are handled the same way, by `Shutdown`: uvicorn's own handling would
re-raise a SIGTERM once its server stopped, and the default action of SIGTERM ends the process
there, before whatever it started (the embedded PostgreSQL, the demo's helper servers) is
stopped; and with several servers in one loop (the demo) each would restore the handler of the
one before it.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
from collections.abc import Iterator
from types import FrameType, TracebackType
from typing import Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE

DRAIN_SECONDS = 30
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

logger = logging.getLogger(__name__)

UVICORN_OPTIONS: dict[str, Any] = {
    "factory": True,
    "loop": "uvloop",
    "http": "httptools",
    "lifespan": "on",
    "access_log": False,
    "timeout_graceful_shutdown": DRAIN_SECONDS,
}


class Server(uvicorn.Server):
    """A uvicorn server that leaves SIGINT and SIGTERM to the process's `Shutdown`."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Shutdown:
    """SIGINT and SIGTERM alike, in the main thread, for as long as the `with` block lasts.

    The first signal asks the first server `watch`ed to stop (drain, then its app's shutdown;
    the caller stops the others after it); any further signal forces every server to stop at
    once, without waiting for connections. A signal never raises, so the code that runs after
    the servers (stopping the embedded PostgreSQL) always runs; one received before `watch`
    stops the servers as soon as they are watched (`requested` says so to skip starting them).
    """

    def __init__(self) -> None:
        self.received: list[int] = []
        self._servers: tuple[uvicorn.Server, ...] = ()
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return bool(self.received)

    def __enter__(self) -> Shutdown:
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for sig, handler in self._previous.items():
            if handler is not None:
                signal.signal(sig, handler)

    def watch(self, first: uvicorn.Server, *others: uvicorn.Server) -> None:
        self._servers = (first, *others)
        self._apply()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signum)
        if len(self.received) == 2:
            print("Stopping now, without waiting for open requests.", file=sys.stderr, flush=True)
        self._apply()

    def _apply(self) -> None:
        if not (self.received and self._servers):
            return
        self._servers[0].should_exit = True
        if len(self.received) > 1:
            for server in self._servers:
                server.should_exit = server.force_exit = True


def run_server(*, host: str, port: int, workers: int, shutdown: Shutdown) -> None:
    """Serve until a signal (`shutdown`'s). With `workers` > 1, uvicorn's supervisor handles the
    signals itself: it passes SIGTERM on to the worker processes and waits for them to drain."""
    if shutdown.requested:
        return
    if workers > 1:
        uvicorn.run("app.main:create_app", host=host, port=port, workers=workers, **UVICORN_OPTIONS)
        return
    config = uvicorn.Config("app.main:create_app", host=host, port=port, **UVICORN_OPTIONS)
    server = Server(config)
    shutdown.watch(server)
    server.run()
    if not server.started:
        sys.exit(STARTUP_FAILURE)
