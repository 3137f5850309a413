"""A gateway pointed at the fake Stripe."""

from __future__ import annotations

from typing import Any

from litestar import Litestar

from app.main import create_app
from tests.conftest import make_settings
from tests.support.fake_stripe import FakeStripe
from tests.support.live import LiveServer

WEBHOOK_SECRET = "whsec_test_tollgate"
PUBLIC_URL = "https://gateway.example"


def billing_app(database_url: str, fake: FakeStripe | None, **overrides: Any) -> Litestar:
    stripe: dict[str, Any] = (
        {
            "STRIPE_API_KEY": fake.api_key,
            "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "STRIPE_API_BASE": fake.url,
        }
        if fake is not None
        else {}
    )
    return create_app(
        make_settings(database_url, TOLLGATE_PUBLIC_URL=PUBLIC_URL, **stripe, **overrides)
    )


def start(app: Litestar) -> LiveServer:
    return LiveServer(app).start()
