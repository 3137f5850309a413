"""Every error, from any layer, has OpenAI's shape; a 500 never leaks a traceback."""

from __future__ import annotations

from typing import Any

import httpx
from litestar import get
from litestar.testing import AsyncTestClient

from app.main import create_app
from tests.conftest import make_settings


def assert_openai_error(
    response: httpx.Response, status: int, code: str | None = None
) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    if code is not None:
        assert error["code"] == code
    assert response.headers["x-request-id"]
    return error


async def test_malformed_json(admin: httpx.AsyncClient) -> None:
    response = await admin.post(
        "/admin/accounts", content=b'{"name": ', headers={"content-type": "application/json"}
    )
    assert_openai_error(response, 400, "invalid_json")


async def test_missing_field_names_it(admin: httpx.AsyncClient) -> None:
    error = assert_openai_error(await admin.post("/admin/accounts", json={}), 400, "missing_field")
    assert error["param"] == "name"


async def test_wrong_type_names_the_field(admin: httpx.AsyncClient) -> None:
    error = assert_openai_error(await admin.post("/admin/accounts", json={"name": 5}), 400)
    assert error["param"] == "name"


async def test_unknown_route(client: httpx.AsyncClient) -> None:
    error = assert_openai_error(await client.get("/v1/nope"), 404, "unknown_url")
    assert "/v1/nope" in error["message"]


async def test_wrong_method(client: httpx.AsyncClient) -> None:
    assert_openai_error(await client.put("/healthz"), 405, "method_not_allowed")


async def test_request_id_is_echoed_or_generated(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz", headers={"x-request-id": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"
    other = await client.get("/healthz")
    assert other.headers["x-request-id"].startswith("req_")


async def test_body_over_limit_is_413(database_url: str) -> None:
    app = create_app(make_settings(database_url, TOLLGATE_MAX_REQUEST_BYTES=2048))
    async with AsyncTestClient(app) as test_client:
        response = await test_client.post(
            "/admin/accounts",
            content=b'{"name": "' + b"x" * 4096 + b'"}',
            headers={
                "content-type": "application/json",
                "Authorization": "Bearer test-admin-token",
            },
        )
    assert_openai_error(response, 413, "request_too_large")


async def test_unexpected_error_is_500_without_traceback(database_url: str) -> None:
    @get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internal detail")

    app = create_app(make_settings(database_url))
    app.register(boom)
    async with AsyncTestClient(app) as test_client:
        response = await test_client.get("/boom")
    error = assert_openai_error(response, 500, "internal_error")
    assert "secret internal detail" not in response.text
    assert "Traceback" not in response.text
    assert error["type"] == "server_error"


async def test_healthz_and_metrics(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    metrics = await client.get("/metrics")
    assert metrics.status_code == 200
    assert "tollgate_http_requests_total" in metrics.text
    assert 'path="/healthz"' in metrics.text
    assert "# TYPE tollgate_requests_total counter" in metrics.text


async def test_healthz_is_503_when_database_is_down() -> None:
    app = create_app(make_settings("postgresql://postgres@127.0.0.1:1/nothing"))
    async with AsyncTestClient(app) as test_client:
        response = await test_client.get("/healthz")
    assert response.status_code == 503
