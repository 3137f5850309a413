"""Top-ups through Stripe Checkout (SPEC 3.5): the amounts a top-up may have, and creating the
Checkout Session.

One Stripe call, no database transaction held open while it runs. The first top-up has Stripe
create the account's Customer; the completed session's webhook stores it for the next ones.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from decimal import Decimal

import stripe
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.credits import repository as ledger
from app.db.engine import unit_of_work
from app.errors import InvalidRequest, NotFound, UpstreamUnavailable
from app.money import money_str, parse_money
from app.payments import repository
from app.payments.config import BillingConfig
from app.payments.currency import to_minor
from app.payments.stripe_api import CheckoutSession, StripeGateway

logger = logging.getLogger(__name__)

RETURN_PATH = "/dashboard/topup/return?session_id={CHECKOUT_SESSION_ID}"
CANCEL_PATH = "/dashboard/topup?canceled=1"


def parse_topup_amount(
    value: object, *, currency: str, config: BillingConfig, param: str = "amount"
) -> Decimal:
    """A top-up or auto-recharge amount: a decimal string within the configured limits, in
    whole minor units of the currency."""
    try:
        amount = parse_money(value, field=param)
        to_minor(amount, currency)
    except ValueError as exc:
        raise InvalidRequest(str(exc), param=param, code="invalid_amount") from exc
    if not config.topup_min <= amount <= config.topup_max:
        raise InvalidRequest(
            f"{param} must be between {money_str(config.topup_min)} and "
            f"{money_str(config.topup_max)} {currency}, not {money_str(amount)}.",
            param=param,
            code="amount_out_of_range",
        )
    return amount


def checkout_urls(config: BillingConfig) -> tuple[str, str]:
    """(success URL, cancel URL). Stripe fills in `{CHECKOUT_SESSION_ID}` itself."""
    return config.public_url + RETURN_PATH, config.public_url + CANCEL_PATH


def product_name(amount: Decimal, currency: str) -> str:
    return f"Tollgate prepaid credit ({money_str(amount)} {currency})"


async def checkout_credited(
    session: AsyncSession, account_id: uuid.UUID, checkout_session_id: str
) -> bool:
    """Whether the top-up of this Checkout Session is on the account yet (for the dashboard's
    return page, which Stripe may reach before its webhook does)."""
    reference = f"stripe:cs:{checkout_session_id}"
    return await ledger.find_entry(session, account_id, reference) is not None


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
    async with unit_of_work(sessionmaker) as session:
        currency = await repository.account_currency(session, account_id)
        if currency is None:
            raise NotFound(f"No account with id {account_id}", param="account_id")
        customer = await repository.get_customer(session, account_id)
        _, email = await repository.account_contact(session, account_id)
    value = parse_topup_amount(amount, currency=currency, config=config)
    success_url, cancel_url = checkout_urls(config)
    try:
        return await gateway.create_checkout_session(
            account_id=str(account_id),
            # None until a completed session has told us the Customer Stripe made.
            customer_id=None if customer is None else customer.customer_id,
            email=email,
            amount=value,
            currency=currency,
            product_name=product_name(value, currency),
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
