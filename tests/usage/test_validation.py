"""Every bad usage query of SPEC 3.3 is a 400 in OpenAI's shape whose message names the field."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.usage.conftest import new_customer

GOOD = {"start_time": "2025-05-01T00:00:00Z", "end_time": "2025-05-02T00:00:00Z"}

BAD: list[tuple[str, Any, str]] = [
    # (case, body, field the message and `param` must name)
    ("missing start_time", {"end_time": "2025-05-02T00:00:00Z"}, "start_time"),
    ("unknown body field", {**GOOD, "granularity": "day"}, "granularity"),
    ("unknown group_by field", {**GOOD, "group_by": ["model", "region"]}, "group_by"),
    ("user_id is admin only", {**GOOD, "group_by": ["user_id"]}, "group_by"),
    ("group_by not a list", {**GOOD, "group_by": "model"}, "group_by"),
    ("unknown filter field", {**GOOD, "filter_group_by": {"region": ["eu"]}}, "region"),
    ("filter not a list", {**GOOD, "filter_group_by": {"model": "llama-3.1-8b"}}, "model"),
    ("filter of numbers", {**GOOD, "filter_group_by": {"user": [1]}}, "user"),
    ("filter not an object", {**GOOD, "filter_group_by": ["model"]}, "filter_group_by"),
    ("key id not an id", {**GOOD, "filter_group_by": {"api_key_id": ["k1"]}}, "api_key_id"),
    ("bad timezone", {**GOOD, "window_timezone": "Mars/Olympus_Mons"}, "window_timezone"),
    ("server-local zone", {**GOOD, "window_timezone": "localtime"}, "window_timezone"),
    ("zone as path", {**GOOD, "window_timezone": "../../etc/passwd"}, "window_timezone"),
    ("end before start", {**GOOD, "end_time": "2025-04-30T00:00:00Z"}, "end_time"),
    ("end equals start", {**GOOD, "end_time": GOOD["start_time"]}, "end_time"),
    ("start in the future", {"start_time": "2999-01-01T00:00:00Z"}, "end_time"),
    ("no offset", {**GOOD, "start_time": "2025-05-01T00:00:00"}, "start_time"),
    ("date only", {**GOOD, "start_time": "2025-05-01"}, "start_time"),
    ("not a date", {**GOOD, "end_time": "yesterday"}, "end_time"),
    ("impossible date", {**GOOD, "start_time": "2025-02-30T00:00:00Z"}, "start_time"),
    ("number as time", {**GOOD, "start_time": 1746057600}, "start_time"),
    ("bad window_size", {**GOOD, "window_size": "WEEK"}, "window_size"),
    ("lower-case window_size", {**GOOD, "window_size": "day"}, "window_size"),
    (
        "over 10,000 MINUTE windows",
        {**GOOD, "end_time": "2025-05-08T00:00:00Z", "window_size": "MINUTE"},
        "window_size",
    ),
    (
        "over 10,000 HOUR windows",
        {
            "start_time": "2024-01-01T00:00:00Z",
            "end_time": "2025-03-01T00:00:00Z",
            "window_size": "HOUR",
        },
        "window_size",
    ),
]


@pytest.mark.parametrize(("case", "body", "field"), BAD, ids=[c for c, _, _ in BAD])
async def test_bad_query_is_400_naming_the_field(
    admin: httpx.AsyncClient, client: httpx.AsyncClient, case: str, body: Any, field: str
) -> None:
    customer = await new_customer(admin, client)
    response = await client.post(
        "/v1/usage/completions", json=body, headers={"Authorization": f"Bearer {customer.key}"}
    )
    assert response.status_code == 400, (case, response.text)
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert field in error["message"], (case, error)
    assert error["param"] is not None and field in error["param"], (case, error)


async def test_malformed_json_and_non_object_bodies(
    admin: httpx.AsyncClient, client: httpx.AsyncClient
) -> None:
    customer = await new_customer(admin, client)
    headers = {"Authorization": f"Bearer {customer.key}", "Content-Type": "application/json"}
    for content in (b"{", b"", b"[]", b'"x"'):
        response = await client.post("/v1/usage/completions", content=content, headers=headers)
        assert response.status_code == 400, content
        assert response.json()["error"]["type"] == "invalid_request_error"


async def test_limits_are_inclusive_and_authentication_comes_first(
    admin: httpx.AsyncClient, client: httpx.AsyncClient
) -> None:
    customer = await new_customer(admin, client)
    # Exactly 10,000 MINUTE windows is allowed.
    body = {
        "start_time": "2025-05-01T00:00:00Z",
        "end_time": "2025-05-07T22:40:00Z",
        "window_size": "MINUTE",
    }
    assert (await customer.usage(**body))["data"] == []
    response = await client.post("/v1/usage/completions", json={"bad": 1})
    assert response.status_code == 401
    response = await client.post(
        "/v1/usage/completions", json=GOOD, headers={"Authorization": "Bearer tg-nope"}
    )
    assert response.status_code == 401


async def test_accepted_spellings(admin: httpx.AsyncClient, client: httpx.AsyncClient) -> None:
    customer = await new_customer(admin, client)
    result = await customer.usage(
        start_time="2025-05-01T02:00:00+02:00",
        end_time="2025-05-01t23:59:60.5z",  # a leap second and lower-case letters, as RFC 3339
        window_size="HOUR",
        window_timezone="UTC",
        group_by=None,
        filter_group_by=None,
    )
    assert result == {
        "data": [],
        "start_time": "2025-05-01T00:00:00Z",
        "end_time": "2025-05-02T00:00:00.5Z",
        "window_size": "HOUR",
    }
    defaulted = await customer.usage(start_time="2025-05-01T00:00:00Z")
    assert defaulted["window_size"] == "DAY"
    assert defaulted["end_time"].endswith("Z") and "." not in defaulted["end_time"]
