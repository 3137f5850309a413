"""Console fixtures: the dashboard tests' gateway and Chromium tab (the console is served by
the same app), and operators made the way an operator makes them."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qs, urlsplit

import pytest
from click.testing import CliRunner

from tests.dashboard.conftest import (  # the same live gateway and browser
    browser,
    chromium,
    customer,
    dashboard,
    operator,
    page,
    shared_page,
)

__all__ = ["browser", "chromium", "customer", "dashboard", "operator", "page", "shared_page"]


def create_operator(database_url: str, email: str, role: str) -> str:
    """`tollgate operators create`, as an operator runs it; returns the link's token."""
    from app.cli import main

    result = CliRunner().invoke(
        main,
        ["operators", "create", email, "--role", role],
        env={"DATABASE_URL": database_url},
    )
    assert result.exit_code == 0, result.output
    link = next(word for word in result.output.split() if "/console/set-password?" in word)
    return parse_qs(urlsplit(link).query)["token"][0]


@pytest.fixture
def make_operator(database_url: str) -> Callable[[str, str], Awaitable[str]]:
    async def make(email: str, role: str) -> str:
        # The command runs its own event loop: off this one.
        return await asyncio.to_thread(create_operator, database_url, email, role)

    return make
