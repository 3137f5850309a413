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
import ctypes
import gc
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
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


# The young generation is collected once this many more objects are alive than at its last
# collection (Python's default is 700). A request's objects are freed by reference counting as
# it ends, so the collector finds little to do; at concurrency 32, 32 requests' live objects
# crossed 700 several times a request's length, a collection each (issue 19).
GC_YOUNG_THRESHOLD = 50_000


class Server(uvicorn.Server):
    """A uvicorn server that leaves SIGINT and SIGTERM to the process's `Shutdown`, and settles
    the process's heap once its app has started (`settle_heap`)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        settle_heap()


def settle_heap() -> None:
    """What is alive after startup (modules, the pricing catalog, the tokenizer, the app: about
    250,000 objects) is moved out of the garbage collector's sight, so a full collection no
    longer walks it: one took ~170 ms, a pause for every request in flight. With the higher
    threshold for young objects too, 10 s at concurrency 32 spent 0.8-0.9 s in the collector
    before and none after (README, Performance)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


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
    """Serve until a signal (`shutdown`'s); with `workers` > 1 in that many processes."""
    if shutdown.requested:
        return
    if workers > 1:
        _run_workers(host, port, workers, shutdown)
        return
    config = uvicorn.Config("app.main:create_app", host=host, port=port, **UVICORN_OPTIONS)
    server = Server(config)
    shutdown.watch(server)
    server.run()
    if not server.started:
        sys.exit(STARTUP_FAILURE)


# Worker processes: each binds its own listening socket with SO_REUSEPORT, so the kernel spreads
# new connections evenly across them (by a hash of the connection). With one shared socket, as
# uvicorn's own `--workers` does, whichever worker wakes first accepts a burst of connections:
# 32 keep-alive connections landed 32/0, 17/15 and 6/26 on two workers (issue 19).
WORKER_RESTART_SECONDS = 1.0
PR_SET_PDEATHSIG = 1


def _listening_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    return sock


def _worker(host: str, port: int) -> None:
    """One worker process: its own socket on the shared port, signals from the supervisor."""
    sock = _listening_socket(host, port)
    config = uvicorn.Config("app.main:create_app", **UVICORN_OPTIONS)
    server = Server(config)
    with Shutdown() as shutdown:
        shutdown.watch(server)
        server.run(sockets=[sock])
    if not server.started:
        sys.exit(STARTUP_FAILURE)


def _run_workers(host: str, port: int, workers: int, shutdown: Shutdown) -> None:
    """Start `workers` processes, restart one that dies, and pass each signal on to them all:
    the first makes them drain and stop, a second stops them at once. The workers run in a
    session of their own, so a Ctrl+C or a signal to the process group reaches them once, from
    here, rather than twice."""
    # Fails here, before any worker starts, when the port is taken by something else.
    _listening_socket(host, port).close()
    context = multiprocessing.get_context("spawn")

    def start() -> multiprocessing.process.BaseProcess:
        process = context.Process(target=_start_worker, args=(host, port), name="tollgate-worker")
        process.start()
        return process

    processes = [start() for _ in range(workers)]
    logger.info("started %d workers on %s:%d (SO_REUSEPORT)", workers, host, port)
    forwarded = 0
    try:
        while any(p.is_alive() for p in processes):
            while forwarded < len(shutdown.received):
                forwarded += 1
                for process in processes:
                    if process.pid is not None and process.is_alive():
                        os.kill(process.pid, signal.SIGTERM)
            if not shutdown.requested:
                for index, process in enumerate(processes):
                    if not process.is_alive():
                        if process.exitcode == STARTUP_FAILURE:
                            logger.error("a worker failed to start: stopping")
                            shutdown.received.append(signal.SIGTERM)
                            break
                        logger.warning(
                            "worker %s exited with %s: restarting it", process.pid, process.exitcode
                        )
                        time.sleep(WORKER_RESTART_SECONDS)
                        processes[index] = start()
            time.sleep(0.1)
    finally:
        for process in processes:
            process.join(timeout=DRAIN_SECONDS + 15)
            if process.is_alive():
                process.kill()
                process.join()
    if any(p.exitcode == STARTUP_FAILURE for p in processes):
        sys.exit(STARTUP_FAILURE)


def _start_worker(host: str, port: int) -> None:
    os.setsid()  # out of the supervisor's process group: its signals come from the supervisor
    with contextlib.suppress(OSError, AttributeError):
        # Linux: SIGTERM (a drain) when the supervisor dies, so no worker outlives it.
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() == 1:  # the supervisor died before the line above
        return
    _worker(host, port)
