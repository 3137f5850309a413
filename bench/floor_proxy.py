"""The stack's floor, as a target of `../shared/peer-bench`: the same server (uvicorn with uvloop
and httptools) and upstream client (one pooled aiohttp session) as Tollgate, and nothing else:
no key, no hold, no price, no commit. Whatever Tollgate adds above this is its own work; what
this adds above the direct upstream is the stack's, which no change inside Tollgate can go
under.

    python bench/floor_proxy.py [--port 8090] [--upstream http://127.0.0.1:18000/v1]

then add `--target floor=http://127.0.0.1:8090/v1 --pid floor=<pid>` to `run-peers.sh`.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import aiohttp
import uvicorn

Scope = dict[str, Any]

# As Tollgate's proxy: hop-by-hop and framing headers are the server's and the client's own.
_DROPPED = frozenset({b"host", b"content-length", b"connection", b"transfer-encoding"})


class FloorProxy:
    """Relays `POST /v1/...` to the upstream: the body whole, the response whole, or a stream
    chunk by chunk as it arrives."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.client: aiohttp.ClientSession | None = None

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        headers = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in scope["headers"]
            if name not in _DROPPED
        ]
        assert self.client is not None
        url = self.upstream + scope["path"].removeprefix("/v1")
        async with self.client.post(url, data=b"".join(chunks), headers=headers) as response:
            relayed = [
                (name, value)
                for name, value in response.raw_headers
                if name.lower() not in (b"content-length", b"transfer-encoding", b"connection")
            ]
            if response.headers.get("content-type", "").startswith("text/event-stream"):
                await send(
                    {"type": "http.response.start", "status": response.status, "headers": relayed}
                )
                async for chunk in response.content.iter_any():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            body = await response.read()
        relayed.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": response.status, "headers": relayed})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.client = aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=0),
                    cookie_jar=aiohttp.DummyCookieJar(),
                    auto_decompress=False,
                )
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.client is not None:
                    await self.client.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--upstream", default="http://127.0.0.1:18000/v1")
    args = parser.parse_args()
    print(f"target:   floor=http://127.0.0.1:{args.port}/v1", flush=True)
    print(f"pid:      floor={os.getpid()}", flush=True)
    uvicorn.run(
        FloorProxy(args.upstream),
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
    )
