"""Signing in to the console over HTTP and in Chromium, and reading a form's CSRF token, for
the console's tests."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator

import httpx
from playwright.async_api import Page

from tests.dashboard.conftest import Dashboard

PASSWORD = "correct horse battery staple"


async def set_password_and_sign_in(page: Page, token: str, email: str) -> None:
    await page.goto(f"/console/set-password?token={token}")
    await page.fill("input[name=password]", PASSWORD)
    await page.click("button[type=submit]")
    await page.wait_for_url("**/console/login")
    await page.fill("input[name=email]", email)
    await page.fill("input[name=password]", PASSWORD)
    await page.press("input[name=password]", "Enter")
    await page.wait_for_url("**/console")


@contextlib.asynccontextmanager
async def client_signed_in(
    dashboard: Dashboard, token: str, email: str
) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=dashboard.url, timeout=30) as client:
        await sign_in_with_link(client, token, email)
        yield client


async def sign_in_with_link(client: httpx.AsyncClient, token: str, email: str) -> None:
    form = await client.get(f"/console/set-password?token={token}")
    await client.post(
        "/console/set-password",
        data={"token": token, "password": PASSWORD, "_csrf_token": csrf(form.text)},
    )
    login = await client.get("/console/login")
    signed = await client.post(
        "/console/login",
        data={"email": email, "password": PASSWORD, "_csrf_token": csrf(login.text)},
    )
    assert signed.status_code == 303, signed.text


def csrf(html: str) -> str:
    match = re.search(r'name="_csrf_token" value="([^"]+)"', html)
    assert match is not None, html[:500]
    return match.group(1)
