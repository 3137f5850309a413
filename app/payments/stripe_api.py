"""The calls Tollgate makes to Stripe, through the official SDK's async client.

`STRIPE_API_BASE` replaces Stripe's API address (tests point it at a local fake). Every POST
carries an idempotency key chosen by the caller, so the SDK's own network retries and ours
can never create a second Checkout Session or charge.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import stripe
from stripe.params.checkout import SessionCreateParams

from app.payments.currency import to_minor


@dataclass(frozen=True, slots=True)
class CheckoutSession:
    id: str
    url: str


class StripeGateway:
    def __init__(
        self,
        api_key: str,
        *,
        api_base: str | None = None,
        timeout: float = 30.0,
        max_network_retries: int = 2,
    ) -> None:
        self._http = stripe.HTTPXClient(timeout=timeout)
        self._client = stripe.StripeClient(
            api_key,
            base_addresses={"api": api_base.rstrip("/")} if api_base else None,
            http_client=self._http,
            max_network_retries=max_network_retries,
        )

    async def close(self) -> None:
        await self._http.close_async()  # type: ignore[no-untyped-call]

    async def create_checkout_session(
        self,
        *,
        account_id: str,
        customer_id: str | None,
        email: str | None,
        amount: Decimal,
        currency: str,
        product_name: str,
        success_url: str,
        cancel_url: str,
        idempotency_key: str,
    ) -> CheckoutSession:
        params: SessionCreateParams = {
            "mode": "payment",
            "client_reference_id": account_id,
            "metadata": {"account_id": account_id},
            # One inline line item: no Product or Price objects to keep in sync.
            "line_items": [
                {
                    "price_data": {
                        "currency": currency.lower(),
                        "unit_amount": to_minor(amount, currency),
                        "product_data": {"name": product_name},
                    },
                    "quantity": 1,
                }
            ],
            # Saves the card on the Customer so auto-recharge can charge it off-session;
            # the metadata lets the PaymentIntent's events be traced back to the account.
            "payment_intent_data": {
                "setup_future_usage": "off_session",
                "metadata": {"account_id": account_id, "purpose": "topup"},
            },
            "success_url": success_url,
            "cancel_url": cancel_url,
        }
        # The one call of SPEC 3.5: a first top-up has Stripe create the Customer (and save the
        # card on it); later ones reuse it, learnt from the completed session.
        if customer_id is None:
            params["customer_creation"] = "always"
            if email:
                params["customer_email"] = email  # prefilled on the payment page
        else:
            params["customer"] = customer_id
        session = await self._client.v1.checkout.sessions.create_async(
            params, {"idempotency_key": idempotency_key}
        )
        if not session.url:
            raise stripe.APIError("Stripe returned a Checkout Session without a URL")
        return CheckoutSession(id=session.id, url=session.url)

    async def charge_off_session(
        self,
        *,
        account_id: str,
        attempt_id: str,
        customer_id: str,
        payment_method_id: str,
        amount_minor: int,
        currency: str,
        idempotency_key: str,
    ) -> dict[str, Any]:
        """Create and confirm a PaymentIntent on the saved card; the PaymentIntent as a dict.
        A decline raises `stripe.CardError`."""
        intent = await self._client.v1.payment_intents.create_async(
            {
                "amount": amount_minor,
                "currency": currency.lower(),
                "customer": customer_id,
                "payment_method": payment_method_id,
                "off_session": True,
                "confirm": True,
                "description": "Tollgate credit auto-recharge",
                "metadata": {
                    "account_id": account_id,
                    "purpose": "auto_recharge",
                    "attempt_id": attempt_id,
                },
            },
            {"idempotency_key": idempotency_key},
        )
        return intent.to_dict()

    async def retrieve_payment_intent(self, payment_intent_id: str) -> dict[str, Any]:
        intent = await self._client.v1.payment_intents.retrieve_async(payment_intent_id)
        return intent.to_dict()
