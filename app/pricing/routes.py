"""`GET /v1/models` and `GET /v1/models/{id}`: the models priced now, in OpenAI's list shape.

The catalog comes from the app-level `catalog` dependency; authentication is applied by the app.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from litestar import get
from litestar.di import NamedDependency
from litestar.params import FromPath

from app.pricing.catalog import Catalog
from app.pricing.listing import model_detail, models_list


@get("/v1/models", sync_to_thread=False)
def list_models(catalog: NamedDependency[Catalog]) -> dict[str, Any]:
    return models_list(catalog, datetime.now(UTC))


@get("/v1/models/{model_id:str}", sync_to_thread=False)
def retrieve_model(catalog: NamedDependency[Catalog], model_id: FromPath[str]) -> dict[str, Any]:
    """Matched like a request (any case, aliases, suffixes); unknown ids raise `ModelNotFound`
    (404 in OpenAI's error shape)."""
    return model_detail(catalog, model_id, datetime.now(UTC))
