"""Creating a Stripe Checkout Session for a top-up (SPEC 3.5).

One Stripe call, no database transaction held open while it runs. The first top-up has Stripe
create the account's Customer; the completed session's webhook stores it for the next ones.
"""

from __future__ import annotations

import hashlib
import logging
import uuid

import stripe
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.errors import NotFound, UpstreamUnavailable
from app.payments import repository, service
from app.payments.config import BillingConfig
from app.payments.stripe_api import CheckoutSession, StripeGateway

logger = logging.getLogger(__name__)


async def create_checkout(
    sessionmaker: async_sessionmaker[AsyncSession],
    gateway: StripeGateway,
    config: BillingConfig,
    *,
    account_id: uuid.UUID,
    amount: object,
    client_key: str | None,
) -> CheckoutSession:
    """`client_key` is the request's `Idempotency-Key`: a client retrying with the same key
    gets the same session from Stripe instead of a second one. Without it every call is a new
    top-up attempt with a key of its own (which still covers the SDK's network retries)."""
    async with sessionmaker() as session:
        currency = await repository.account_currency(session, account_id)
        if currency is None:
            raise NotFound(f"No account with id {account_id}", param="account_id")
        customer = await repository.get_customer(session, account_id)
        _, email = await repository.account_contact(session, account_id)
    value = service.parse_topup_amount(amount, currency=currency, config=config)
    success_url, cancel_url = service.checkout_urls(config)
    try:
        return await gateway.create_checkout_session(
            account_id=str(account_id),
            # None until a completed session has told us the Customer Stripe made.
            customer_id=None if customer is None else customer.customer_id,
            email=email,
            amount=value,
            currency=currency,
            product_name=service.product_name(value, currency),
            success_url=success_url,
            cancel_url=cancel_url,
            idempotency_key=_attempt_key(account_id, client_key),
        )
    except stripe.StripeError as exc:
        logger.error("Stripe refused a Checkout Session for %s: %s", account_id, exc)
        raise UpstreamUnavailable(
            "Stripe could not create the Checkout Session; please try again later.",
            code="payment_provider_error",
        ) from exc


def _attempt_key(account_id: uuid.UUID, client_key: str | None) -> str:
    if not client_key:
        return f"tollgate-checkout-{uuid.uuid4()}"
    # Scoped to the account, so two customers' keys can never collide at Stripe.
    digest = hashlib.sha256(f"{account_id}:{client_key}".encode()).hexdigest()[:40]
    return f"tollgate-checkout-{digest}"
