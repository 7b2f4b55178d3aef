"""stripe_webhook: verified, deduplicated Stripe events -> subscriptions, invoices and plans.

The signature is checked on the raw body before anything is parsed or written; the request
thread then reads the event and hands it to the instance's group committer, which stores the
events waiting at that moment keyed by id and applies them in one transaction
(`record_stripe_events`), commits, and only then releases each request with its receipt.
Answers: 200 for a new or a duplicate event; 400 problem+json for a bad signature, a stale or
future timestamp, or a body that is not a Stripe event (nothing written, Stripe stops retrying
only after days, and the log says why); 5xx when applying fails (nothing written, so Stripe's
retry starts clean: a batch that fails is re-run one event per transaction, so only the event
that fails is refused). Emails an event calls for are sent after the commit; failing to send
one is logged and never fails the event.
"""

from __future__ import annotations

import atexit
import logging
import threading
from collections.abc import Sequence
from typing import Any

import flask
import functions_framework

from shared_layer.batch_rows import Executor
from shared_layer.billing.webhook import signed_stripe_event
from shared_layer.group_commit import GroupCommitter
from shared_layer.http import ApiRequest, Router
from shared_layer.lean_transaction import LeanTransactions
from shared_layer.schemas.billing import StripeWebhookReceipt
from shared_layer.services.email import send_email
from shared_layer.services.stripe_events import (
    EventReceipt,
    VerifiedEvent,
    record_stripe_events,
    verified_event,
)

logger = logging.getLogger(__name__)
router = Router("stripe_webhook")

MAX_BATCH = 64  # events per transaction; more waiting than that go in the next one
COMMITTERS = 1  # measured: two in flight make smaller batches and cost more CPU per event

_committer: GroupCommitter[VerifiedEvent, EventReceipt, Executor] | None = None
_committer_lock = threading.Lock()


def committer() -> GroupCommitter[VerifiedEvent, EventReceipt, Executor]:
    """The instance's committer, made on the first event (no thread at import)."""
    global _committer
    if _committer is None:
        with _committer_lock:
            if _committer is None:
                transactions = LeanTransactions()
                _committer = GroupCommitter(
                    transaction=transactions,
                    apply_batch=record_stripe_events,
                    max_batch=MAX_BATCH,
                    committers=COMMITTERS,
                    after_commit=_log_outcomes,
                    name="stripe-webhook-commit",
                )
                atexit.register(_shut_down, _committer, transactions)
    return _committer


def _shut_down(gc: GroupCommitter[Any, Any, Any], transactions: LeanTransactions) -> None:
    """At exit: commit what is queued, then close the committers' connections."""
    gc.close()
    transactions.close()


@router.route("POST", "/")
def receive(req: ApiRequest) -> StripeWebhookReceipt:
    verified = verified_event(*signed_stripe_event(req))
    receipt = committer().submit(verified)  # returns once the event is committed
    _send_emails(receipt)
    return StripeWebhookReceipt(
        event_id=receipt.event_id, duplicate=receipt.duplicate, outcome=receipt.outcome
    )


def _log_outcomes(events: Sequence[VerifiedEvent], receipts: Sequence[EventReceipt]) -> None:
    """At DEBUG, a line per committed transaction naming each event and its outcome. Each
    event's outcome is kept in `stripe_events`; a log line per event costs a write to stdout
    per request, which the committer cannot spare at full rate."""
    if not logger.isEnabledFor(logging.DEBUG):
        return
    outcomes = [
        {"event_id": v.event.id, "event_type": v.event.type, "outcome": r.outcome}
        for v, r in zip(events, receipts, strict=True)
    ]
    logger.debug(
        "stripe events committed: %s",
        ", ".join(f"{o['event_id']} ({o['event_type']}): {o['outcome']}" for o in outcomes),
        extra={"stripe_events": outcomes},
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
