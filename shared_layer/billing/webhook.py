"""The event a Stripe webhook request carries, read only once its signature checks out.

`stripe_webhook` calls this before anything is written, and so do the benchmark's floors
(`bench/webhook_floor`), so that they measure the webhook's own checking and parsing.
"""

from __future__ import annotations

from shared_layer.billing.signature import verify_stripe_signature
from shared_layer.config import get_stripe_config
from shared_layer.errors import InvalidInput, UpstreamError
from shared_layer.http import ApiRequest, parse_json_as
from shared_layer.schemas.billing import StripeEventIn
from shared_layer.sql import JsonText

__all__ = ["signed_stripe_event"]


def signed_stripe_event(req: ApiRequest) -> tuple[StripeEventIn, JsonText]:
    """The event, parsed and validated, and the body as it was signed (stored as it is):
    400 for a bad signature, a stale or future timestamp, a body that is not an event or one
    that cannot be stored (a NUL anywhere: `JsonText`);
    503 when no signing secret is configured."""
    config = get_stripe_config()
    if config.webhook_secret is None:
        raise UpstreamError("the Stripe webhook is not configured: STRIPE_WEBHOOK_SECRET")
    body = req.body_bytes()
    verify_stripe_signature(
        body,
        req.raw.headers.get("Stripe-Signature"),
        secret=config.webhook_secret.get_secret_value(),
        tolerance_seconds=config.webhook_tolerance_seconds,
    )
    event = parse_json_as(StripeEventIn, body, where="event")
    try:
        return event, JsonText(body.decode("utf-8"))
    except ValueError as exc:
        raise InvalidInput(f"the event cannot be stored as it came: {exc}") from None
