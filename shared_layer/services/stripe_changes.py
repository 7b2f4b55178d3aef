"""What a Stripe event asks to change, read from its object, and the rules that decide whether
it may: no database here, so a request thread checks an event before it queues it, and the
same rules serve one event or a batch.

Out-of-order delivery: a subscription or invoice row remembers the `created` time of the event
that last changed it (`version`); an older event is `stale` and changes nothing. Stripe objects
carry no "updated at" of their own, so the event's `created` is the object's timestamp. Ties
(the same second) go to the later arrival, except that a subscription that ended (`canceled`,
`incomplete_expired`) never comes back, as in Stripe, and a paid invoice stays paid.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from shared_layer.billing.plans import plan_for_price
from shared_layer.errors import InvalidInput
from shared_layer.models import utcnow
from shared_layer.schemas.common import MAX_UNIX_SECONDS
from shared_layer.services.billing import TERMINAL_STATUSES

__all__ = [
    "CheckoutLink",
    "InvoiceChange",
    "SubscriptionChange",
    "apply_invoice",
    "apply_subscription",
    "change_for",
]

Row = dict[str, Any]  # a row of `subscriptions` or `invoices`, by column name


@dataclass(frozen=True)
class CheckoutLink:
    """checkout.session.completed: link the customer to the user our session named."""

    customer_id: str | None
    user_id: uuid.UUID | None


@dataclass(frozen=True)
class SubscriptionChange:
    """customer.subscription.*: the subscription's state as of `created`."""

    id: str
    customer_id: str
    named_user: uuid.UUID | None  # the user the object's metadata names, if any
    created: int
    fields: Mapping[str, Any]  # columns the event sets


@dataclass(frozen=True)
class InvoiceChange:
    """invoice.paid | invoice.payment_failed: the invoice's outcome as of `created`."""

    id: str
    customer_id: str
    named_user: uuid.UUID | None
    created: int
    fields: Mapping[str, Any]  # columns the event sets, but the user's


Change = CheckoutLink | SubscriptionChange | InvoiceChange

_SUBSCRIPTION_TYPES = frozenset(
    f"customer.subscription.{what}" for what in ("created", "updated", "deleted")
)


def change_for(type_: str, obj: Mapping[str, Any], created: int) -> Change | None:
    """The change an event of `type_` asks for; None for a type that changes nothing.

    A missing or mistyped field we rely on is a malformed event: `InvalidInput` (400).
    """
    if type_ == "checkout.session.completed":
        return CheckoutLink(_opt_str(obj, "customer"), _metadata_user(obj))
    if type_ in _SUBSCRIPTION_TYPES:
        return SubscriptionChange(
            _str(obj, "id"), _str(obj, "customer"), _metadata_user(obj), created, _sub_fields(obj)
        )
    if type_ in ("invoice.paid", "invoice.payment_failed"):
        status = "paid" if type_ == "invoice.paid" else "payment_failed"
        return InvoiceChange(
            _str(obj, "id"),
            _str(obj, "customer"),
            _metadata_user(obj),
            created,
            _invoice_fields(obj, status),
        )
    return None


def apply_subscription(
    row: Row | None, change: SubscriptionChange, user_id: uuid.UUID | None
) -> tuple[Row | None, str]:
    """The row after `change`, and the outcome (applied | stale | unmatched).

    `row` is the stored row (None: not stored yet); `user_id` the user the customer belongs
    to, which only a new row needs. The row given is never modified.
    """
    fields = change.fields
    at = datetime.fromtimestamp(change.created, UTC)
    if row is None:
        if user_id is None:
            return None, "unmatched"
        now = utcnow()
        return {
            **fields,
            "id": change.id,
            "user_id": user_id,
            "stripe_customer_id": change.customer_id,
            "past_due_since": at if fields["status"] == "past_due" else None,
            "version": change.created,
            "created_at": now,
            "updated_at": now,
        }, "applied"
    ended = row["status"] in TERMINAL_STATUSES and fields["status"] not in TERMINAL_STATUSES
    if change.created < row["version"] or ended:
        return row, "stale"
    new = {**row, **fields, "version": change.created, "updated_at": utcnow()}
    if fields["status"] != "past_due":
        new["past_due_since"] = None
    elif row["status"] != "past_due" or row["past_due_since"] is None:
        new["past_due_since"] = at
    return new, "applied"


def apply_invoice(row: Row | None, change: InvoiceChange, user_id: uuid.UUID) -> tuple[Row, str]:
    """The invoice row after `change` (applied | stale); a paid invoice stays paid."""
    now = utcnow()
    fields = {**change.fields, "user_id": user_id, "version": change.created, "updated_at": now}
    if row is None:
        return {**fields, "id": change.id, "created_at": now}, "applied"
    if change.created < row["version"] or row["status"] == "paid":
        return row, "stale"
    return {**row, **fields}, "applied"


# Reading Stripe objects


def _sub_fields(obj: Mapping[str, Any]) -> dict[str, Any]:
    items = obj.get("items")
    first: Mapping[str, Any] = {}
    if isinstance(items, dict) and isinstance(items.get("data"), list) and items["data"]:
        first = items["data"][0] if isinstance(items["data"][0], dict) else {}
    price = first.get("price")
    price_id = price.get("id") if isinstance(price, dict) else price
    price_id = _fits("items.data.0.price.id", price_id) if isinstance(price_id, str) else None
    return {
        "plan": plan_for_price(price_id),
        "price_id": price_id,
        "status": _str(obj, "status", max_length=_STATUS_LENGTH),
        # Since API version 2025-03-31 the period lives on the item; before, on the subscription.
        "current_period_start": _period(obj, first, "current_period_start"),
        "current_period_end": _period(obj, first, "current_period_end"),
        "cancel_at_period_end": bool(obj.get("cancel_at_period_end")),
        "canceled_at": _time("canceled_at", obj.get("canceled_at")),
    }


def _invoice_fields(obj: Mapping[str, Any], status: str) -> dict[str, Any]:
    parent = obj.get("parent") if isinstance(obj.get("parent"), dict) else {}
    details = parent.get("subscription_details") if parent else None
    subscription_id = obj.get("subscription") or (
        details.get("subscription") if isinstance(details, dict) else None
    )
    url = obj.get("hosted_invoice_url")
    return {
        "stripe_customer_id": _str(obj, "customer"),
        "subscription_id": _fits("subscription", subscription_id)
        if isinstance(subscription_id, str)
        else None,
        "status": status,
        "currency": _str(obj, "currency").lower()[:3],
        "amount_due": _int(obj, "amount_due"),
        "amount_paid": _int(obj, "amount_paid", 0),
        "attempt_count": _int(obj, "attempt_count", 0, bits=32),
        "hosted_invoice_url": url if isinstance(url, str) else None,
    }


# What the columns hold (shared_layer.models): ids in String(255), a status in String(32),
# amounts in BigInteger, the attempt count in Integer, times from Unix seconds.
_ID_LENGTH = 255
_STATUS_LENGTH = 32


def _str(obj: Mapping[str, Any], name: str, *, max_length: int = _ID_LENGTH) -> str:
    value = obj.get(name)
    if isinstance(value, dict):  # an expanded object: its id
        value = value.get("id")
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"the event's data.object.{name} must be a non-empty string")
    return _fits(name, value, max_length)


def _fits(name: str, value: str, max_length: int = _ID_LENGTH) -> str:
    if len(value) > max_length:
        raise InvalidInput(
            f"the event's data.object.{name} is {len(value)} characters; it is stored in at "
            f"most {max_length} characters"
        )
    return value


def _opt_str(obj: Mapping[str, Any], name: str) -> str | None:
    return _str(obj, name) if obj.get(name) is not None else None


def _int(obj: Mapping[str, Any], name: str, default: int | None = None, *, bits: int = 64) -> int:
    value = obj.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidInput(f"the event's data.object.{name} must be an integer")
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    if not low <= value <= high:
        raise InvalidInput(
            f"the event's data.object.{name} must be an integer between {low} and {high}, "
            f"as it is stored in a {bits}-bit column"
        )
    return value


def _period(obj: Mapping[str, Any], item: Mapping[str, Any], name: str) -> datetime | None:
    if name in obj:
        return _time(name, obj[name])
    return _time(f"items.data.0.{name}", item.get(name))


def _time(name: str, value: Any) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidInput(f"the event's data.object.{name} must be integer Unix seconds")
    if not 0 <= value <= MAX_UNIX_SECONDS:
        raise InvalidInput(
            f"the event's data.object.{name} must be Unix seconds between 0 and "
            f"{MAX_UNIX_SECONDS} (the year 3000)"
        )
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
