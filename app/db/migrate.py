"""Apply Alembic migrations from the bundled `migrations/` directory."""

from __future__ import annotations

from alembic import command
from alembic.config import Config

from app.config import MIGRATIONS_DIR


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser interpolation would choke on a `%` in a password.
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "heads") -> None:
    """`alembic upgrade heads`. Blocking: call it before the event loop or in a thread."""
    command.upgrade(alembic_config(database_url), revision)
