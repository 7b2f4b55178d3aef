"""Floors for bench/webhooks.py: how fast a Stripe webhook could possibly be on this stack.

`verify_only` does what stripe_webhook does before the database (the Router, the signature
check, JSON and the event model) and answers; `verify_and_insert` adds one transaction with one
INSERT of the event; `verify_and_batched_insert` hands the event to a group committer as
stripe_webhook does (batches led by a request thread, lean transactions) that only INSERTs the
waiting events, in one statement, and commits. Measured with `bench/webhooks.py --floors`, they
show how much of the gap to hello-world is the HTTP adapter, how much a transaction per event,
and how much is left once transactions are shared (what applying the events costs on top).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import flask
import functions_framework
from sqlalchemy import Table

from shared_layer.batch_rows import Executor, insert_new_and_lock
from shared_layer.billing.webhook import signed_stripe_event
from shared_layer.database import session_scope
from shared_layer.group_commit import GroupCommitter
from shared_layer.http import ApiRequest, Router
from shared_layer.lean_transaction import LeanTransactions
from shared_layer.models import StripeEvent, utcnow
from shared_layer.schemas.billing import StripeEventIn, StripeWebhookReceipt
from shared_layer.sql import JsonText

only = Router("verify_only")
insert = Router("verify_and_insert")
batched = Router("verify_and_batched_insert")
_EVENTS: Table = StripeEvent.__table__  # type: ignore[assignment]


def _row(event: StripeEventIn, payload: JsonText) -> dict[str, Any]:
    """The `stripe_events` row the floors store (outcome `ignored`: nothing is applied)."""
    return {
        "id": event.id,
        "type": event.type,
        "created": utcnow(),
        "livemode": event.livemode,
        "outcome": "ignored",
        "payload": payload,
        "received_at": utcnow(),
    }


@only.route("POST", "/")
def verify(req: ApiRequest) -> StripeWebhookReceipt:
    event, _ = signed_stripe_event(req)
    return StripeWebhookReceipt(event_id=event.id, duplicate=False, outcome="ignored")


@insert.route("POST", "/")
def verify_and_store(req: ApiRequest) -> StripeWebhookReceipt:
    event, payload = signed_stripe_event(req)
    row = _row(event, payload)
    with session_scope() as session:
        new = insert_new_and_lock(session, _EVENTS, [row], key="id")[0]
    return StripeWebhookReceipt(event_id=event.id, duplicate=not new, outcome="ignored")


def _store_batch(db: Executor, rows: Sequence[dict[str, Any]]) -> list[bool]:
    inserted, _ = insert_new_and_lock(db, _EVENTS, rows, key="id")
    return [row["id"] in inserted for row in rows]


_committer: GroupCommitter[dict[str, Any], bool, Executor] | None = None
_committer_lock = threading.Lock()


def _batch_committer() -> GroupCommitter[dict[str, Any], bool, Executor]:
    global _committer
    with _committer_lock:
        if _committer is None:
            _committer = GroupCommitter(transaction=LeanTransactions(), apply_batch=_store_batch)
        return _committer


@batched.route("POST", "/")
def verify_and_store_batched(req: ApiRequest) -> StripeWebhookReceipt:
    event, payload = signed_stripe_event(req)
    row = _row(event, payload)
    new = _batch_committer().submit(row)
    return StripeWebhookReceipt(event_id=event.id, duplicate=not new, outcome="ignored")


@functions_framework.http
def verify_only(request: flask.Request) -> flask.Response:
    return only.dispatch(request)


@functions_framework.http
def verify_and_insert(request: flask.Request) -> flask.Response:
    return insert.dispatch(request)


@functions_framework.http
def verify_and_batched_insert(request: flask.Request) -> flask.Response:
    return batched.dispatch(request)
