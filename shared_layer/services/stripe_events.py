"""Stripe events, each taking effect once and never moving a subscription back in time.

`record_stripe_events` stores a batch of verified events keyed by id (`insert_new`: a second
delivery, even one arriving at the same moment in another instance, finds it and stops; a
copy later in the same batch is a duplicate too) and applies the new ones in the caller's
transaction, so a failure leaves neither the events nor half their effect, and Stripe's retry
starts clean. `record_stripe_event` is the same for one event.

Applying a batch costs two statements however many events it holds: one inserts the events
and reads the subscription and invoice rows they name under their row locks (`batch_rows.
insert_new_and_lock`: events, then subscriptions, then invoices, each in key order, so two
batches touching the same rows wait on each other rather than deadlock); the events of one row
are applied in arrival order in memory (`stripe_changes`: versions, terminal states, a paid
invoice); one writes every changed row and every event's outcome back (`update_rows`). Rows a
batch creates are inserted in between; one that another transaction created meanwhile (the
first event of a subscription, delivered twice at once) is read again under its lock and the
row's events applied on top of it.

Handled: checkout.session.completed (links the customer to the user),
customer.subscription.created|updated|deleted, invoice.paid, invoice.payment_failed (also
emails the user). Every other type is stored as `ignored`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import Connection, Table, select

from shared_layer.batch_rows import Executor, connection_of, insert_new_and_lock, update_rows
from shared_layer.config import get_settings
from shared_layer.email.templates import format_money
from shared_layer.idempotency import insert_new
from shared_layer.models import BillingCustomer, Invoice, StripeEvent, Subscription, User, utcnow
from shared_layer.schemas.billing import StripeEventIn
from shared_layer.services.email import EmailRequest
from shared_layer.services.stripe_changes import (
    Change,
    CheckoutLink,
    InvoiceChange,
    Row,
    SubscriptionChange,
    apply_invoice,
    apply_subscription,
    change_for,
)
from shared_layer.sql import JsonText

__all__ = [
    "HANDLED_TYPES",
    "EventReceipt",
    "VerifiedEvent",
    "record_stripe_event",
    "record_stripe_events",
    "verified_event",
]

HANDLED_TYPES = frozenset(
    {
        "checkout.session.completed",
        "customer.subscription.created",
        "customer.subscription.updated",
        "customer.subscription.deleted",
        "invoice.paid",
        "invoice.payment_failed",
    }
)

_SUBSCRIPTIONS: Table = Subscription.__table__  # type: ignore[assignment]
_INVOICES: Table = Invoice.__table__  # type: ignore[assignment]
_EVENTS: Table = StripeEvent.__table__  # type: ignore[assignment]


@dataclass(frozen=True)
class VerifiedEvent:
    """An event whose signature verified, with the change it asks for already read."""

    event: StripeEventIn
    payload: Mapping[str, Any] | JsonText  # as stored: the verified body itself, if at hand
    change: Change | None  # None: a type that changes nothing


@dataclass(frozen=True)
class EventReceipt:
    event_id: str
    duplicate: bool
    outcome: str  # applied | stale | ignored | unmatched | duplicate
    emails: tuple[EmailRequest, ...] = field(default=())


def verified_event(event: StripeEventIn, payload: Mapping[str, Any] | JsonText) -> VerifiedEvent:
    """Read what `event` asks to change; `InvalidInput` if its object is malformed."""
    return VerifiedEvent(event, payload, change_for(event.type, event.data.object, event.created))


def record_stripe_event(
    db: Executor, *, event: StripeEventIn, payload: Mapping[str, Any]
) -> EventReceipt:
    """Store and apply one verified event; a duplicate id is acknowledged with no effect.

    `emails` are what the caller sends after committing.
    """
    return record_stripe_events(db, [verified_event(event, payload)])[0]


def record_stripe_events(db: Executor, events: Sequence[VerifiedEvent]) -> list[EventReceipt]:
    """Store and apply verified events in the transaction of `db` (a session's or a
    connection's); a receipt for each.

    The batch takes effect as if its events had arrived one after the other (checkout links
    first, then each row's events in arrival order): they were all in flight at once, so
    that is an order they could have had.
    """
    now = utcnow()
    rows = [
        {
            "id": v.event.id,
            "type": v.event.type,
            "created": datetime.fromtimestamp(v.event.created, UTC),
            "livemode": v.event.livemode,
            "outcome": "received",
            "payload": v.payload,
            "received_at": now,
        }
        for v in events
    ]
    changes = [v.change for v in events]
    conn = connection_of(db)
    inserted, (found_subs, found_invoices) = insert_new_and_lock(
        conn,
        _EVENTS,
        rows,
        key="id",
        locks=[
            (_SUBSCRIPTIONS, {c.id for c in changes if isinstance(c, SubscriptionChange)}, _READ),
            (_INVOICES, {c.id for c in changes if isinstance(c, InvoiceChange)}, _read(_INVOICES)),
        ],
    )
    new: dict[int, VerifiedEvent] = {}
    for i, verified in enumerate(events):
        if verified.event.id in inserted:
            inserted.discard(verified.event.id)  # a later copy in this batch is a duplicate
            new[i] = verified
    outcomes, emails = _apply(conn, new, found_subs, found_invoices)
    return [
        EventReceipt(v.event.id, duplicate=False, outcome=outcomes[i], emails=emails.get(i, ()))
        if i in new
        else EventReceipt(v.event.id, duplicate=True, outcome="duplicate")
        for i, v in enumerate(events)
    ]


# The columns the rules read of a locked row: the rest is written back by key, never read.
_READ = ("id", "status", "version", "past_due_since")


def _apply(
    conn: Connection,
    events: Mapping[int, VerifiedEvent],
    found_subs: dict[str, Row],
    found_invoices: dict[str, Row],
) -> tuple[dict[int, str], dict[int, tuple[EmailRequest, ...]]]:
    """Apply the new events (keyed by their place in the batch) to the rows locked for them
    and write back what changed, the events' outcomes with it: outcomes and emails."""
    outcomes: dict[int, str] = {i: "ignored" for i, v in events.items() if v.change is None}
    subs: list[tuple[int, SubscriptionChange]] = []
    invoices: list[tuple[int, InvoiceChange]] = []
    for i, verified in events.items():
        change = verified.change
        if isinstance(change, CheckoutLink):  # first: later events may need the link
            outcomes[i] = _link_customer(conn, change)
        elif isinstance(change, SubscriptionChange):
            subs.append((i, change))
        elif isinstance(change, InvoiceChange):
            invoices.append((i, change))
    users = _users_for(
        conn,
        [(c.customer_id, c.named_user) for _, c in subs if c.id not in found_subs]
        + [(c.customer_id, c.named_user) for _, c in invoices],
    )

    def subscription_step(row: Row | None, c: SubscriptionChange) -> tuple[Row | None, str]:
        return apply_subscription(row, c, users(c.customer_id, c.named_user))

    def invoice_step(row: Row | None, c: InvoiceChange) -> tuple[Row | None, str]:
        user_id = users(c.customer_id, c.named_user)
        return (row, "unmatched") if user_id is None else apply_invoice(row, c, user_id)

    changed_subs = _fold_and_create(
        conn, _SUBSCRIPTIONS, found_subs, subs, subscription_step, outcomes
    )
    changed_invoices = _fold_and_create(
        conn, _INVOICES, found_invoices, invoices, invoice_step, outcomes
    )
    plans = {row["id"]: row["plan"] for row in changed_subs}  # not written back yet
    emails = {
        i: _payment_failed_email(conn, users(c.customer_id, c.named_user), c, plans)
        for i, c in invoices
        if outcomes[i] == "applied" and c.fields["status"] == "payment_failed"
    }
    update_rows(  # last: a lean transaction sends it with the COMMIT
        conn,
        [
            (_SUBSCRIPTIONS, changed_subs),
            (_INVOICES, changed_invoices),
            (_EVENTS, [{"id": events[i].event.id, "outcome": o} for i, o in outcomes.items()]),
        ],
    )
    return outcomes, emails


C = TypeVar("C", SubscriptionChange, InvoiceChange)
Step = Callable[[Row | None, C], tuple[Row | None, str]]


def _fold_and_create(
    conn: Connection,
    table: Table,
    found: dict[str, Row],
    changes: list[tuple[int, C]],
    step: Step[C],
    outcomes: dict[int, str],
) -> list[Row]:
    """Apply each row's changes in order to the locked rows (outcomes go in `outcomes`),
    insert the rows the changes create; the existing rows that changed, to write back."""
    rows = _fold(found, changes, step, outcomes)
    created = [row for key, row in rows.items() if key not in found and row is not None]
    changed = [r for key, r in rows.items() if key in found and r is not found[key] and r]
    if not created:
        return changed
    inserted, _ = insert_new_and_lock(conn, table, created, key="id")
    lost = {row["id"] for row in created} - inserted
    if lost:  # created by another transaction since we looked: apply ours on top of theirs
        _, (theirs,) = insert_new_and_lock(
            conn, table, [], key="id", locks=[(table, lost, _read(table))]
        )
        again = _fold(theirs, [(i, c) for i, c in changes if c.id in lost], step, outcomes)
        changed += [r for key, r in again.items() if key in theirs and r is not theirs[key] and r]
    return changed


def _read(table: Table) -> tuple[str, ...]:
    return _READ if table is _SUBSCRIPTIONS else _READ[:3]  # an invoice has no past_due_since


def _fold(
    found: Mapping[str, Row],
    changes: Iterable[tuple[int, C]],
    step: Step[C],
    outcomes: dict[int, str],
) -> dict[str, Row | None]:
    rows: dict[str, Row | None] = dict(found)
    for i, change in changes:
        rows[change.id], outcomes[i] = step(rows.get(change.id), change)
    return rows


def _users_for(
    conn: Connection, wanted: list[tuple[str, uuid.UUID | None]]
) -> Callable[[str, uuid.UUID | None], uuid.UUID | None]:
    """Who a Stripe customer belongs to: the linked user, else the user the object's metadata
    names (our Checkout Sessions set it), if that user exists. Two reads for the batch."""
    linked: dict[str, uuid.UUID] = {}
    existing: set[uuid.UUID] = set()
    if wanted:
        customers = sorted({customer for customer, _ in wanted})
        linked = {
            customer: user_id
            for customer, user_id in conn.execute(
                select(BillingCustomer.stripe_customer_id, BillingCustomer.user_id).where(
                    BillingCustomer.stripe_customer_id.in_(customers)
                )
            )
        }
        named = {user for customer, user in wanted if user and customer not in linked}
        if named:
            existing = set(conn.execute(select(User.id).where(User.id.in_(named))).scalars())

    def user_for(customer: str, named_user: uuid.UUID | None) -> uuid.UUID | None:
        if customer in linked:
            return linked[customer]
        return named_user if named_user in existing else None

    return user_for


def _link_customer(conn: Connection, change: CheckoutLink) -> str:
    user_id, customer_id = change.user_id, change.customer_id
    if customer_id is None or user_id is None:
        return "unmatched"
    if conn.scalar(select(User.id).where(User.id == user_id)) is None:
        return "unmatched"
    linked = conn.scalar(
        select(BillingCustomer.stripe_customer_id).where(BillingCustomer.user_id == user_id)
    )
    if linked is None:
        insert_new(
            conn,
            BillingCustomer,
            [{"user_id": user_id, "stripe_customer_id": customer_id, "created_at": utcnow()}],
            key="user_id",
        )
        return "applied"
    return "applied" if linked == customer_id else "ignored"


def _payment_failed_email(
    conn: Connection,
    user_id: uuid.UUID | None,
    invoice: InvoiceChange,
    plans: Mapping[str, str | None],
) -> tuple[EmailRequest, ...]:
    email = conn.scalar(select(User.email).where(User.id == user_id)) if user_id else None
    if user_id is None or email is None:
        return ()
    fields = invoice.fields
    subscription_id = fields["subscription_id"]
    plan = (
        plans[subscription_id]
        if subscription_id in plans
        else conn.scalar(select(Subscription.plan).where(Subscription.id == subscription_id))
    )
    context = {
        "amount": format_money(fields["amount_due"], fields["currency"]),
        "plan": plan or "paid",
        "link": fields["hosted_invoice_url"] or get_settings().billing_portal_return_url,
        "grace_days": str(get_settings().billing_grace_period_days),
    }
    return (EmailRequest(email, "payment_failed", context, user_id),)
