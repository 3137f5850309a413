"""`GET /healthz`: 200 when the database answers, 503 otherwise."""

from __future__ import annotations

import asyncio

from litestar import Response, get
from litestar.datastructures import State
from sqlalchemy import text


@get("/healthz", include_in_schema=False)
async def healthz(state: State) -> Response[dict[str, str]]:
    try:
        async with asyncio.timeout(2):
            async with state.engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
    except Exception:
        return Response({"status": "unavailable"}, status_code=503)
    return Response({"status": "ok"})
