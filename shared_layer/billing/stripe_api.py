"""Calls to Stripe's API through the official `stripe` library: customers, Checkout and the
Billing Portal.

The client is built on first use and cached per (key, base address): `STRIPE_API_BASE` points
it at another server (the loopback fake in tests), and the library's own retries
(`STRIPE_MAX_NETWORK_RETRIES`, with idempotency keys) handle network blips. Every Stripe
exception becomes an `UpstreamError` here, where Stripe is called; nothing above this module
knows the library exists.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from shared_layer.config import get_settings
from shared_layer.errors import UpstreamError

if TYPE_CHECKING:
    from stripe import StripeClient
    from stripe._base_address import BaseAddresses

__all__ = [
    "CheckoutSession",
    "create_checkout_session",
    "create_customer",
    "create_portal_session",
    "stripe_client",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckoutSession:
    id: str
    url: str


@lru_cache(maxsize=4)
def _client(api_key: str, api_base: str | None, max_retries: int) -> StripeClient:
    from stripe import StripeClient

    base_addresses: BaseAddresses | None = {"api": api_base.rstrip("/")} if api_base else None
    return StripeClient(api_key, base_addresses=base_addresses, max_network_retries=max_retries)


def stripe_client() -> StripeClient:
    """The configured client; `UpstreamError` when Stripe is not configured."""
    settings = get_settings()
    if settings.stripe_secret_key is None:
        raise UpstreamError("billing is not configured: STRIPE_SECRET_KEY is not set")
    return _client(
        settings.stripe_secret_key.get_secret_value(),
        settings.stripe_api_base,
        settings.stripe_max_network_retries,
    )


@contextmanager
def _stripe_call(action: str) -> Iterator[None]:
    from stripe import StripeError

    try:
        yield
    except StripeError as exc:
        status = exc.http_status or "no answer"
        logger.warning("Stripe could not %s (%s): %s", action, status, exc.user_message)
        raise UpstreamError(
            f"Stripe could not {action} ({status}): {exc.user_message or type(exc).__name__}"
        ) from exc


def create_customer(*, user_id: uuid.UUID, email: str) -> str:
    """A new Stripe customer for the user; its id.

    The idempotency key is the user's id: a retry after a crash between Stripe's answer and
    our commit gets the same customer back (Stripe keeps keys for 24 hours).
    """
    with _stripe_call("create the customer"):
        customer = stripe_client().v1.customers.create(
            params={"email": email, "metadata": {"user_id": str(user_id)}},
            options={"idempotency_key": f"stratus-customer-{user_id}"},
        )
    return customer.id


def create_checkout_session(
    *,
    customer_id: str,
    user_id: uuid.UUID,
    plan: str,
    price_id: str,
    success_url: str,
    cancel_url: str,
) -> CheckoutSession:
    """A Checkout Session subscribing the customer to `price_id`; the user pays at its URL."""
    metadata = {"user_id": str(user_id), "plan": plan}
    with _stripe_call("create the Checkout Session"):
        session = stripe_client().v1.checkout.sessions.create(
            params={
                "mode": "subscription",
                "customer": customer_id,
                "client_reference_id": str(user_id),
                "line_items": [{"price": price_id, "quantity": 1}],
                "success_url": success_url,
                "cancel_url": cancel_url,
                "metadata": metadata,
                "subscription_data": {"metadata": metadata},
            }
        )
    if not session.url:
        raise UpstreamError("Stripe answered a Checkout Session without a URL")
    return CheckoutSession(session.id, session.url)


def create_portal_session(*, customer_id: str, return_url: str) -> str:
    """A Billing Portal session for the customer; the URL to send the user to."""
    with _stripe_call("create the Billing Portal session"):
        session = stripe_client().v1.billing_portal.sessions.create(
            params={"customer": customer_id, "return_url": return_url}
        )
    return session.url
