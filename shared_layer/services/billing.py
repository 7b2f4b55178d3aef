"""Billing from the user's side: which plan is in effect, their Stripe customer, what they
may buy.

A plan comes from a subscription: `active` and `trialing` grant its plan; `past_due` keeps it
for `BILLING_GRACE_PERIOD_DAYS` after the subscription fell behind; anything else (`canceled`,
`unpaid`, `incomplete`, ...) grants nothing, so the user is on `free`. When several
subscriptions grant a plan, the best plan wins. Quotas count usage over the billing period:
the granting subscription's current period, or the calendar month (UTC) on free.

Plain SQL (`shared_layer.sql`): the agents function checks the plan on every submission, and
its cold start must not pay for SQLAlchemy.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from shared_layer.billing import stripe_api
from shared_layer.billing.plans import FREE, Plan, get_plan, get_plans
from shared_layer.config import get_settings
from shared_layer.errors import Conflict, InvalidInput, Unauthorized, UpstreamError
from shared_layer.services.users import USER_COLUMNS, UserRecord, get_active_user, user_from_row
from shared_layer.sql import Db, as_datetime, as_uuid

__all__ = [
    "GRANTING_STATUSES",
    "TERMINAL_STATUSES",
    "PlanStatus",
    "SubscriptionRecord",
    "calendar_month",
    "checkout_plan",
    "ensure_customer",
    "lock_user",
    "plan_in_effect",
    "portal_customer",
]

GRANTING_STATUSES = frozenset({"active", "trialing"})
TERMINAL_STATUSES = frozenset({"canceled", "incomplete_expired"})  # Stripe never revives these


@dataclass(frozen=True)
class SubscriptionRecord:
    """A `subscriptions` row, as far as the plan in effect reads it."""

    id: str
    user_id: uuid.UUID
    plan: str | None
    status: str
    current_period_start: datetime | None
    current_period_end: datetime | None
    cancel_at_period_end: bool
    past_due_since: datetime | None
    version: int
    updated_at: datetime


def _maybe_datetime(value: Any) -> datetime | None:
    return None if value is None else as_datetime(value)


def _subscription_from_row(row: dict[str, Any]) -> SubscriptionRecord:
    return SubscriptionRecord(
        id=row["id"],
        user_id=as_uuid(row["user_id"]),
        plan=row["plan"],
        status=row["status"],
        current_period_start=_maybe_datetime(row["current_period_start"]),
        current_period_end=_maybe_datetime(row["current_period_end"]),
        cancel_at_period_end=bool(row["cancel_at_period_end"]),
        past_due_since=_maybe_datetime(row["past_due_since"]),
        version=int(row["version"]),
        updated_at=as_datetime(row["updated_at"]),
    )


@dataclass(frozen=True)
class PlanStatus:
    """The plan in effect for a user, why, and the billing period its quotas count over."""

    plan: Plan
    subscription: SubscriptionRecord | None  # the granting one, else the newest one, else None
    grace_ends_at: datetime | None  # set while a past_due subscription still grants its plan
    period_start: datetime
    period_end: datetime

    @property
    def status(self) -> str:
        return self.subscription.status if self.subscription else "none"


def calendar_month(now: datetime) -> tuple[datetime, datetime]:
    start = now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )
    return start, end


def _grace_ends_at(subscription: SubscriptionRecord) -> datetime | None:
    if subscription.status != "past_due":
        return None
    since = subscription.past_due_since or subscription.updated_at
    return since + timedelta(days=get_settings().billing_grace_period_days)


def _grants(subscription: SubscriptionRecord, now: datetime) -> bool:
    if subscription.plan is None:  # a price no plan is configured with
        return False
    if subscription.status in GRANTING_STATUSES:
        return True
    grace_ends = _grace_ends_at(subscription)
    return grace_ends is not None and now < grace_ends


def plan_in_effect(db: Db, *, user_id: uuid.UUID, now: datetime | None = None) -> PlanStatus:
    now = now or datetime.now(UTC)
    plans = get_plans()
    rows = db.all(
        "SELECT id, user_id, plan, status, current_period_start, current_period_end,"
        " cancel_at_period_end, past_due_since, version, updated_at"
        " FROM subscriptions WHERE user_id = :user_id",
        {"user_id": user_id},
    )
    subscriptions = [_subscription_from_row(row) for row in rows]
    granting = [s for s in subscriptions if _grants(s, now)]
    if granting:
        best = max(granting, key=lambda s: (plans[s.plan or FREE].rank, s.version))
        start, end = best.current_period_start, best.current_period_end
        if start is None or end is None or not start <= now < end:
            start, end = calendar_month(now)
        return PlanStatus(plans[best.plan or FREE], best, _grace_ends_at(best), start, end)
    newest = max(subscriptions, key=lambda s: s.version, default=None)
    start, end = calendar_month(now)
    return PlanStatus(plans[FREE], newest, None, start, end)


def lock_user(db: Db, *, user_id: uuid.UUID) -> UserRecord:
    """The active user, locked until the transaction ends: per-user checks that must not race
    (quotas, one customer) run under it. PostgreSQL locks the row (`FOR UPDATE`); on SQLite a
    `transaction()` already holds the database's one write lock from its start (IMMEDIATE).
    A user comes first in the one lock order, user → agent → task (services/task_claims.py)."""
    row = db.one(
        f"SELECT {USER_COLUMNS} FROM users WHERE id = :id{db.for_update}",  # noqa: S608
        {"id": user_id},
    )
    if row is None or not row["is_active"]:
        raise Unauthorized("the token's user no longer exists or is disabled")
    return user_from_row(row)


def ensure_customer(db: Db, *, user_id: uuid.UUID) -> str:
    """The user's Stripe customer id, creating the customer on first use.

    Concurrent first checkouts must not create two customers: the user's row is locked while
    the customer is looked up and created, the creation carries an idempotency key derived
    from the user, and the row is inserted only if absent. The caller commits before doing
    anything else with Stripe, so the customer is never lost to a later failure.
    """
    user = lock_user(db, user_id=user_id)
    existing = _customer_id(db, user_id)
    if existing:
        return existing
    customer_id = stripe_api.create_customer(user_id=user_id, email=user.email)
    db.execute(
        "INSERT INTO billing_customers (user_id, stripe_customer_id, created_at)"
        " VALUES (:user_id, :customer, :now) ON CONFLICT (user_id) DO NOTHING",
        {"user_id": user_id, "customer": customer_id, "now": datetime.now(UTC)},
    )
    stored = _customer_id(db, user_id)
    assert stored, "inserted or already there"
    return stored


def _customer_id(db: Db, user_id: uuid.UUID) -> str | None:
    found: str | None = db.scalar(
        "SELECT stripe_customer_id FROM billing_customers WHERE user_id = :user_id",
        {"user_id": user_id},
    )
    return found


def checkout_plan(db: Db, *, user_id: uuid.UUID, plan_name: str) -> Plan:
    """The paid plan the user may check out; `Conflict` when a subscription already grants a
    paid plan (plan changes go through the Billing Portal)."""
    plan = get_plan(plan_name)
    if plan.name == FREE:
        raise InvalidInput(
            "free needs no checkout; cancel a subscription in the billing portal instead",
            errors=[{"field": "plan", "message": "must be a paid plan"}],
        )
    if not plan.price_id:
        raise UpstreamError(
            f"plan {plan.name} cannot be bought: STRIPE_PRICE_{plan.name.upper()} is not set"
        )
    current = plan_in_effect(db, user_id=user_id)
    if current.plan.name != FREE:
        raise Conflict(
            f"you are already on {current.plan.name} ({current.status}); change plans in the "
            "billing portal (POST /billing/portal)",
            extra={"plan": current.plan.name},
        )
    return plan


def portal_customer(db: Db, *, user_id: uuid.UUID) -> str:
    """The customer whose Billing Portal the user may open; `Conflict` before any checkout."""
    get_active_user(db, user_id=user_id)
    customer_id = _customer_id(db, user_id)
    if customer_id is None:
        raise Conflict("no billing account yet: subscribe first with POST /billing/checkout")
    return customer_id
