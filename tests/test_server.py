"""The served process's garbage collector (app.server.settle_heap), checked in a process of its
own: freezing the test process's heap would keep every later test's garbage."""

from __future__ import annotations

import subprocess
import sys

from app.server import GC_YOUNG_THRESHOLD

_SERVE = """
import asyncio, gc
import uvicorn
from app.server import Server

async def app(scope, receive, send):
    pass

server = Server(uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="off", log_level="warning"))

async def main():
    print(gc.get_freeze_count(), gc.get_threshold()[0])
    serving = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    print(gc.get_freeze_count(), gc.get_threshold()[0])
    server.should_exit = True
    await serving

asyncio.run(main())
"""


def test_a_started_server_freezes_its_startup_heap_and_collects_young_objects_less_often() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _SERVE], capture_output=True, text=True, timeout=60, check=True
    )
    before, after = (tuple(map(int, line.split())) for line in done.stdout.splitlines())
    assert before == (0, 700)  # Python's defaults until the server has started
    frozen, threshold = after
    assert frozen > 10_000  # the imported modules at least
    assert threshold == GC_YOUNG_THRESHOLD
