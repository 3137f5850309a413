"""Run the ASGI app under uvicorn, with a drain period on SIGTERM.

On SIGTERM uvicorn stops accepting connections, lets running requests (streams included)
finish for up to `DRAIN_SECONDS`, then runs the app's shutdown, which flushes the usage writer.
"""

from __future__ import annotations

from typing import Any

import uvicorn

DRAIN_SECONDS = 30

UVICORN_OPTIONS: dict[str, Any] = {
    "factory": True,
    "loop": "uvloop",
    "http": "httptools",
    "lifespan": "on",
    "access_log": False,
    "timeout_graceful_shutdown": DRAIN_SECONDS,
}


def run_server(*, host: str, port: int, workers: int = 1) -> None:
    uvicorn.run("app.main:create_app", host=host, port=port, workers=workers, **UVICORN_OPTIONS)
