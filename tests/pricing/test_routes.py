"""`GET /v1/models` and `GET /v1/models/{id}` through Litestar, with the catalog injected as the
app will inject it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from litestar.di import Provide
from litestar.testing import TestClient, create_test_client

from app.accounts.auth import Principal
from app.errors import error_response
from app.pricing import Catalog
from app.pricing.routes import list_models, retrieve_model

CREATED_2025_01_01 = 1_735_689_600


def anyone() -> Principal:
    return Principal(uuid.uuid4(), uuid.uuid4())


def client_for(catalog: Catalog) -> TestClient[Any]:
    return create_test_client(
        route_handlers=[list_models, retrieve_model],
        dependencies={
            "catalog": Provide(lambda: catalog, sync_to_thread=False),
            # Authentication is the app's (tested with the gateway); any customer will do.
            "principal": Provide(anyone, sync_to_thread=False),
        },
        exception_handlers={Exception: error_response},
    )


@pytest.fixture
def client(shipped: Catalog) -> Iterator[TestClient[Any]]:
    with client_for(shipped) as test_client:
        yield test_client


def test_list_has_every_model_and_its_suffixed_variants(client: TestClient[Any]) -> None:
    response = client.get("/v1/models")
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list"
    ids = [model["id"] for model in body["data"]]
    bases = ["llama-3.3-70b", "llama-3.1-8b", "deepseek-r1-70b", "pixtral-12b-2409"]
    assert ids == [f"{b}{s}" for b in bases for s in ("", "-online", "-deep")]


def test_list_entries_are_openai_model_objects_with_string_prices(
    client: TestClient[Any],
) -> None:
    data = {model["id"]: model for model in client.get("/v1/models").json()["data"]}
    assert data["pixtral-12b-2409"] == {
        "id": "pixtral-12b-2409",
        "object": "model",
        "created": CREATED_2025_01_01,
        "owned_by": "mistralai",
        "context_length": 131072,
        "pricing": {"currency": "EUR", "input": "0.35", "output": "0.35", "image": "0.001"},
    }
    assert data["deepseek-r1-70b-deep"]["pricing"] == {
        "currency": "EUR",
        "input": "8.00",
        "output": "8.50",
        "request": "0.012",
    }
    assert data["llama-3.3-70b-online"]["pricing"]["request"] == "0.006"
    assert data["llama-3.3-70b-online"]["owned_by"] == "meta"


def test_retrieve_matches_like_a_request(client: TestClient[Any]) -> None:
    response = client.get("/v1/models/LLAMA-3-3-70B-Online")
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == "llama-3.3-70b-online"
    assert body["pricing"] == {
        "currency": "EUR",
        "input": "0.80",
        "output": "0.80",
        "request": "0.006",
    }


def test_retrieve_unknown_model_is_an_openai_404(client: TestClient[Any]) -> None:
    response = client.get("/v1/models/gpt-4o")
    assert response.status_code == 404
    assert response.json() == {
        "error": {
            "message": "The model `gpt-4o` does not exist or is not priced.",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        }
    }


def test_non_chat_models_are_listed_with_their_own_prices(fixture_catalog: Catalog) -> None:
    with client_for(fixture_catalog) as client:
        data = {model["id"]: model for model in client.get("/v1/models").json()["data"]}
        image = client.get("/v1/models/test-image").json()
    assert "test-embed-online" not in data
    assert data["test-embed"]["pricing"] == {"currency": "EUR", "embedding": "0.02"}
    assert data["test-whisper"]["pricing"]["transcription_per_minute"] == "0.006"
    assert data["test-tts"]["pricing"]["speech_per_million_characters"] == "15.00"
    assert data["test-cached"]["pricing"]["cached_input"] == "0.50"
    assert image["context_length"] is None
    assert image["pricing"]["image_generation"] == {
        "default_size": "1024x1024",
        "default_quality": "standard",
        "prices": {
            "1024x1024": {"standard": "0.04", "hd": "0.08"},
            "1792x1024": {"standard": "0.08", "hd": "0.12"},
        },
    }
