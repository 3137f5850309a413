"""`GET /v1/models` and `GET /v1/models/{id}`: the models priced now, in OpenAI's list shape.

Customer routes like the rest of SPEC 3 (and OpenAI's): they need a valid API key, resolved by
the app-level `principal` dependency; the catalog comes from the `catalog` dependency.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from litestar import get
from litestar.di import NamedDependency
from litestar.params import FromPath

from app.accounts.auth import Principal
from app.pricing.catalog import Catalog
from app.pricing.listing import model_detail, models_list


@get("/v1/models", sync_to_thread=False)
def list_models(
    catalog: NamedDependency[Catalog], principal: NamedDependency[Principal]
) -> dict[str, Any]:
    return models_list(catalog, datetime.now(UTC))


@get("/v1/models/{model_id:str}", sync_to_thread=False)
def retrieve_model(
    catalog: NamedDependency[Catalog],
    principal: NamedDependency[Principal],
    model_id: FromPath[str],
) -> dict[str, Any]:
    """Matched like a request (any case, aliases, suffixes); unknown ids raise `ModelNotFound`
    (404 in OpenAI's error shape)."""
    return model_detail(catalog, model_id, datetime.now(UTC))
