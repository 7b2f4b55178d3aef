"""sendgrid_webhook: SendGrid's signed Event Webhook -> email history and suppression list.

The ECDSA signature over timestamp + raw body is checked before anything is parsed or written.
A batch (a JSON array, up to `SENDGRID_WEBHOOK_MAX_BODY_BYTES`, 16 MiB by default: SendGrid
batches run to several MB) is stored in one transaction, each event once by `sg_event_id`.
Answers 200 with counts; 400 problem+json for a bad or missing signature, a timestamp outside
the window, or a body that is not an array of events (nothing written).
"""

from __future__ import annotations

import logging

import flask
import functions_framework
from pydantic import ValidationError

from shared_layer.config import get_settings
from shared_layer.database import session_scope
from shared_layer.email.event_signature import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    verify_sendgrid_signature,
)
from shared_layer.errors import UpstreamError
from shared_layer.http import ApiRequest, Router, invalid_input_from, parse_json
from shared_layer.schemas.billing import SendGridBatch, SendGridWebhookReceipt
from shared_layer.services.email_events import record_sendgrid_events

logger = logging.getLogger(__name__)
router = Router("sendgrid_webhook")
MAX_LISTED_ERRORS = 20  # a broken batch of thousands of events names its first few faults


@router.route("POST", "/")
def receive(req: ApiRequest) -> SendGridWebhookReceipt:
    settings = get_settings()
    if not settings.sendgrid_webhook_public_key:
        raise UpstreamError("the SendGrid webhook is not configured: SENDGRID_WEBHOOK_PUBLIC_KEY")
    req.max_body_bytes = settings.sendgrid_webhook_max_body_bytes  # batches exceed MAX_BODY_BYTES
    body = req.body_bytes()
    verify_sendgrid_signature(
        body,
        signature=req.raw.headers.get(SIGNATURE_HEADER),
        timestamp=req.raw.headers.get(TIMESTAMP_HEADER),
        public_key=settings.sendgrid_webhook_public_key,
        max_age_seconds=settings.sendgrid_webhook_max_age_seconds,
    )
    payload = parse_json(body)
    try:
        SendGridBatch.validate_python(payload)
    except ValidationError as exc:
        error = invalid_input_from(exc, where="event batch")
        error.extra["errors"] = error.errors = error.errors[:MAX_LISTED_ERRORS]
        raise error from None
    with session_scope() as session:
        receipt = record_sendgrid_events(session, events=payload)  # validated just above
    logger.info(
        "sendgrid batch: %s events, %s new, %s suppressed",
        receipt.received,
        receipt.stored,
        receipt.suppressed,
        extra={"received": receipt.received, "stored": receipt.stored},
    )
    return SendGridWebhookReceipt(**receipt.__dict__)


@functions_framework.http
def sendgrid_webhook(request: flask.Request) -> flask.Response:
    return router.dispatch(request)
