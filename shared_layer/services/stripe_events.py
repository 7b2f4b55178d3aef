"""Stripe events, each taking effect once and never moving a subscription back in time.

`record_stripe_event` stores the event keyed by its id (`insert_new`: a second delivery, even
one arriving at the same moment, finds it and stops) and applies it in the same transaction,
so a failure leaves neither the event nor half its effect, and Stripe's retry starts clean.

Out-of-order delivery: a subscription or invoice row remembers the `created` time of the event
that last changed it (`version`); an older event is stored as `stale` and changes nothing.
Stripe objects carry no "updated at" of their own, so the event's `created` is the object's
timestamp. Ties (the same second) go to the later arrival, except that a subscription that
ended (`canceled`, `incomplete_expired`) never comes back, as in Stripe, and a paid invoice
stays paid.

Handled: checkout.session.completed (links the customer to the user),
customer.subscription.created|updated|deleted, invoice.paid, invoice.payment_failed (also
emails the user). Every other type is stored as `ignored`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from shared_layer.billing.plans import plan_for_price
from shared_layer.config import get_settings
from shared_layer.email.templates import format_money
from shared_layer.errors import InvalidInput
from shared_layer.idempotency import insert_new
from shared_layer.models import BillingCustomer, Invoice, StripeEvent, Subscription, User, utcnow
from shared_layer.schemas.billing import StripeEventIn
from shared_layer.services.billing import TERMINAL_STATUSES
from shared_layer.services.email import EmailRequest

__all__ = ["HANDLED_TYPES", "EventReceipt", "record_stripe_event"]


@dataclass(frozen=True)
class Handled:
    outcome: str  # applied | stale | ignored | unmatched
    emails: tuple[EmailRequest, ...] = ()


@dataclass(frozen=True)
class EventReceipt:
    event_id: str
    duplicate: bool
    outcome: str
    emails: tuple[EmailRequest, ...] = field(default=())


def record_stripe_event(
    session: Session, *, event: StripeEventIn, payload: Mapping[str, Any]
) -> EventReceipt:
    """Store and apply a verified event; a duplicate id is acknowledged with no effect.

    `emails` are what the caller sends after committing.
    """
    inserted = insert_new(
        session,
        StripeEvent,
        [
            {
                "id": event.id,
                "type": event.type,
                "created": datetime.fromtimestamp(event.created, UTC),
                "livemode": event.livemode,
                "outcome": "received",
                "payload": dict(payload),
                "received_at": utcnow(),
            }
        ],
        key="id",
    )
    if not inserted:
        return EventReceipt(event.id, duplicate=True, outcome="duplicate")
    handler = HANDLERS.get(event.type)
    handled = handler(session, event) if handler else Handled("ignored")
    session.execute(
        update(StripeEvent).where(StripeEvent.id == event.id).values(outcome=handled.outcome)
    )
    return EventReceipt(event.id, duplicate=False, outcome=handled.outcome, emails=handled.emails)


# Reading Stripe objects: a missing or mistyped field we rely on is a malformed event (400).


def _str(obj: Mapping[str, Any], name: str) -> str:
    value = obj.get(name)
    if isinstance(value, dict):  # an expanded object: its id
        value = value.get("id")
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"the event's data.object.{name} must be a non-empty string")
    return value


def _opt_str(obj: Mapping[str, Any], name: str) -> str | None:
    return _str(obj, name) if obj.get(name) is not None else None


def _int(obj: Mapping[str, Any], name: str, default: int | None = None) -> int:
    value = obj.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidInput(f"the event's data.object.{name} must be an integer")
    return value


def _time(value: Any) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidInput("a Stripe timestamp must be integer Unix seconds")
    return datetime.fromtimestamp(value, UTC)


def _metadata_user(obj: Mapping[str, Any]) -> uuid.UUID | None:
    metadata = obj.get("metadata")
    raw = obj.get("client_reference_id") or (
        metadata.get("user_id") if isinstance(metadata, dict) else None
    )
    try:
        return uuid.UUID(str(raw)) if raw else None
    except ValueError:
        return None


def _user_for(session: Session, customer_id: str, obj: Mapping[str, Any]) -> uuid.UUID | None:
    """The user a Stripe customer belongs to: the linked one, else the one the object's
    metadata names (our Checkout Sessions set it), if that user exists."""
    linked = session.scalar(
        select(BillingCustomer.user_id).where(BillingCustomer.stripe_customer_id == customer_id)
    )
    if linked is not None:
        return linked
    named = _metadata_user(obj)
    if named is not None and session.get(User, named) is not None:
        return named
    return None


def _is_stale(event_created: int, version: int) -> bool:
    return event_created < version


# Handlers


def _checkout_completed(session: Session, event: StripeEventIn) -> Handled:
    obj = event.data.object
    customer_id = _opt_str(obj, "customer")
    user_id = _metadata_user(obj)
    if customer_id is None or user_id is None or session.get(User, user_id) is None:
        return Handled("unmatched")
    linked = session.scalar(
        select(BillingCustomer.stripe_customer_id).where(BillingCustomer.user_id == user_id)
    )
    if linked is None:
        insert_new(
            session,
            BillingCustomer,
            [{"user_id": user_id, "stripe_customer_id": customer_id, "created_at": utcnow()}],
            key="user_id",
        )
        return Handled("applied")
    return Handled("applied" if linked == customer_id else "ignored")


def _subscription_fields(obj: Mapping[str, Any]) -> dict[str, Any]:
    items = obj.get("items")
    first: Mapping[str, Any] = {}
    if isinstance(items, dict) and isinstance(items.get("data"), list) and items["data"]:
        first = items["data"][0] if isinstance(items["data"][0], dict) else {}
    price = first.get("price")
    price_id = price.get("id") if isinstance(price, dict) else price
    # Since API version 2025-03-31 the period lives on the item; before, on the subscription.
    start = obj.get("current_period_start", first.get("current_period_start"))
    end = obj.get("current_period_end", first.get("current_period_end"))
    price_id = price_id if isinstance(price_id, str) else None
    return {
        "plan": plan_for_price(price_id),
        "price_id": price_id,
        "status": _str(obj, "status"),
        "current_period_start": _time(start),
        "current_period_end": _time(end),
        "cancel_at_period_end": bool(obj.get("cancel_at_period_end")),
        "canceled_at": _time(obj.get("canceled_at")),
    }


def _subscription_changed(session: Session, event: StripeEventIn) -> Handled:
    obj = event.data.object
    subscription_id, customer_id = _str(obj, "id"), _str(obj, "customer")
    fields = _subscription_fields(obj)
    at = datetime.fromtimestamp(event.created, UTC)
    row = _locked(session, Subscription, subscription_id)
    if row is None:  # the first event of this subscription: whose is it?
        user_id = _user_for(session, customer_id, obj)
        if user_id is None:
            return Handled("unmatched")
        new = {
            **fields,
            "id": subscription_id,
            "user_id": user_id,
            "stripe_customer_id": customer_id,
            "past_due_since": at if fields["status"] == "past_due" else None,
            "version": event.created,
            "created_at": utcnow(),
            "updated_at": utcnow(),
        }
        if insert_new(session, Subscription, [new], key="id"):
            return Handled("applied")
        row = _locked(session, Subscription, subscription_id)  # a concurrent event created it
        assert row is not None
    ended = row.status in TERMINAL_STATUSES and fields["status"] not in TERMINAL_STATUSES
    if _is_stale(event.created, row.version) or ended:
        return Handled("stale")
    if fields["status"] != "past_due":
        row.past_due_since = None
    elif row.status != "past_due" or row.past_due_since is None:
        row.past_due_since = at
    for name, value in fields.items():
        setattr(row, name, value)
    row.version = event.created
    return Handled("applied")


def _invoice_changed(session: Session, event: StripeEventIn) -> Handled:
    obj = event.data.object
    invoice_id, customer_id = _str(obj, "id"), _str(obj, "customer")
    user_id = _user_for(session, customer_id, obj)
    if user_id is None:
        return Handled("unmatched")
    status = "paid" if event.type == "invoice.paid" else "payment_failed"
    parent = obj.get("parent") if isinstance(obj.get("parent"), dict) else {}
    details = parent.get("subscription_details") if parent else None
    subscription_id = obj.get("subscription") or (
        details.get("subscription") if isinstance(details, dict) else None
    )
    fields: dict[str, Any] = {
        "user_id": user_id,
        "stripe_customer_id": customer_id,
        "subscription_id": subscription_id if isinstance(subscription_id, str) else None,
        "status": status,
        "currency": _str(obj, "currency").lower()[:3],
        "amount_due": _int(obj, "amount_due"),
        "amount_paid": _int(obj, "amount_paid", 0),
        "attempt_count": _int(obj, "attempt_count", 0),
        "hosted_invoice_url": obj.get("hosted_invoice_url")
        if isinstance(obj.get("hosted_invoice_url"), str)
        else None,
        "version": event.created,
        "updated_at": utcnow(),
    }
    row = _locked(session, Invoice, invoice_id)
    new = {**fields, "id": invoice_id, "created_at": utcnow()}
    if row is None and not insert_new(session, Invoice, [new], key="id"):
        row = _locked(session, Invoice, invoice_id)  # a concurrent event created it
        assert row is not None
    if row is not None:
        if _is_stale(event.created, row.version) or row.status == "paid":
            return Handled("stale")
        for name, value in fields.items():
            setattr(row, name, value)
    emails = _payment_failed_email(session, user_id, fields) if status == "payment_failed" else ()
    return Handled("applied", emails)


def _payment_failed_email(
    session: Session, user_id: uuid.UUID, invoice: Mapping[str, Any]
) -> tuple[EmailRequest, ...]:
    user = session.get(User, user_id)
    if user is None:
        return ()
    plan = session.scalar(
        select(Subscription.plan).where(Subscription.id == invoice["subscription_id"])
    )
    context = {
        "amount": format_money(invoice["amount_due"], invoice["currency"]),
        "plan": plan or "paid",
        "link": invoice["hosted_invoice_url"] or get_settings().billing_portal_return_url,
        "grace_days": str(get_settings().billing_grace_period_days),
    }
    return (EmailRequest(user.email, "payment_failed", context, user_id),)


def _locked(session: Session, model: type[Subscription] | type[Invoice], key: str) -> Any:
    """The row, locked until commit (and re-read: another transaction may have changed it)."""
    return session.scalar(
        select(model)
        .where(model.id == key)
        .with_for_update()
        .execution_options(populate_existing=True)
    )


HANDLERS: dict[str, Callable[[Session, StripeEventIn], Handled]] = {
    "checkout.session.completed": _checkout_completed,
    "customer.subscription.created": _subscription_changed,
    "customer.subscription.updated": _subscription_changed,
    "customer.subscription.deleted": _subscription_changed,
    "invoice.paid": _invoice_changed,
    "invoice.payment_failed": _invoice_changed,
}
HANDLED_TYPES = frozenset(HANDLERS)
