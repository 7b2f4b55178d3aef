"""stripe_webhook: verified, deduplicated Stripe events -> subscriptions, invoices and plans.

The signature is checked on the raw body before anything is parsed or written; the event is
stored keyed by its id and applied in the same transaction (`record_stripe_event`). Answers:
200 for a new or a duplicate event; 400 problem+json for a bad signature, a stale or future
timestamp, or a body that is not a Stripe event (nothing written, Stripe stops retrying only
after days, and the log says why); 5xx when applying fails (nothing written, so Stripe's retry
starts clean). Emails an event calls for are sent after the commit; failing to send one is
logged and never fails the event.
"""

from __future__ import annotations

import logging

import flask
import functions_framework
from pydantic import ValidationError

from shared_layer.billing.signature import verify_stripe_signature
from shared_layer.config import get_stripe_config
from shared_layer.database import session_scope
from shared_layer.errors import UpstreamError
from shared_layer.http import ApiRequest, Router, invalid_input_from, parse_json
from shared_layer.schemas.billing import StripeEventIn, StripeWebhookReceipt
from shared_layer.services.email import send_email
from shared_layer.services.stripe_events import EventReceipt, record_stripe_event

logger = logging.getLogger(__name__)
router = Router("stripe_webhook")


def _verified_event(req: ApiRequest) -> tuple[StripeEventIn, dict[str, object]]:
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
    payload = parse_json(body)
    try:
        return StripeEventIn.model_validate(payload), payload
    except ValidationError as exc:
        raise invalid_input_from(exc, where="event") from None


@router.route("POST", "/")
def receive(req: ApiRequest) -> StripeWebhookReceipt:
    event, payload = _verified_event(req)
    with session_scope() as session:
        receipt = record_stripe_event(session, event=event, payload=payload)
    logger.info(
        "stripe event %s (%s): %s",
        event.id,
        event.type,
        receipt.outcome,
        extra={"event_id": event.id, "event_type": event.type, "outcome": receipt.outcome},
    )
    _send_emails(receipt)
    return StripeWebhookReceipt(
        event_id=event.id, duplicate=receipt.duplicate, outcome=receipt.outcome
    )


def _send_emails(receipt: EventReceipt) -> None:
    for email in receipt.emails:
        try:
            send_email(email)
        except Exception:  # the event is stored and applied; an email must not undo that
            logger.exception("could not send the %s email for %s", email.template, receipt.event_id)


@functions_framework.http
def stripe_webhook(request: flask.Request) -> flask.Response:
    return router.dispatch(request)
