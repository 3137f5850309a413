"""Pricing: loads the rate tables in `pricing/*.toml` and prices usage exactly (pure functions).

catalog = load_catalog(settings.pricing_dir)            # at start; PricingConfigError if bad
resolved = catalog.resolve(model, at)                    # ModelNotFound if not priced at `at`
charge = price(resolved, Usage(Endpoint.CHAT, prompt_tokens=13, completion_tokens=7))
charge.total, charge.lines, charge_to_json(charge)      # exact Decimal; JSON money as text
"""

from app.pricing.catalog import (
    DEFAULT_IMAGE_TOKENS,
    Catalog,
    ImageGenerationPrices,
    ModelPrices,
    PriceVersion,
    ResolvedModel,
)
from app.pricing.charge import Charge, ChargeLine, image_price, price
from app.pricing.listing import catalog_as_json, render_catalog_table
from app.pricing.loader import PricingConfigError, load_catalog
from app.pricing.serialize import charge_json, charge_to_json, format_money, receipt
from app.pricing.usage import Endpoint, Usage

__all__ = [
    "DEFAULT_IMAGE_TOKENS",
    "Catalog",
    "Charge",
    "ChargeLine",
    "Endpoint",
    "ImageGenerationPrices",
    "ModelPrices",
    "PriceVersion",
    "PricingConfigError",
    "ResolvedModel",
    "Usage",
    "catalog_as_json",
    "charge_json",
    "charge_to_json",
    "format_money",
    "image_price",
    "load_catalog",
    "price",
    "receipt",
    "render_catalog_table",
]
