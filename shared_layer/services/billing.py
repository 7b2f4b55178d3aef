"""Billing from the user's side: which plan is in effect, their Stripe customer, what they
may buy.

A plan comes from a subscription: `active` and `trialing` grant its plan; `past_due` keeps it
for `BILLING_GRACE_PERIOD_DAYS` after the subscription fell behind; anything else (`canceled`,
`unpaid`, `incomplete`, ...) grants nothing, so the user is on `free`. When several
subscriptions grant a plan, the best plan wins. Quotas count usage over the billing period:
the granting subscription's current period, or the calendar month (UTC) on free.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared_layer.billing import stripe_api
from shared_layer.billing.plans import FREE, Plan, get_plan, get_plans
from shared_layer.config import get_settings
from shared_layer.errors import Conflict, InvalidInput, Unauthorized, UpstreamError
from shared_layer.idempotency import insert_new
from shared_layer.models import BillingCustomer, Subscription, User

__all__ = [
    "GRANTING_STATUSES",
    "TERMINAL_STATUSES",
    "PlanStatus",
    "checkout_plan",
    "ensure_customer",
    "lock_user",
    "plan_in_effect",
    "portal_customer",
]

GRANTING_STATUSES = frozenset({"active", "trialing"})
TERMINAL_STATUSES = frozenset({"canceled", "incomplete_expired"})  # Stripe never revives these


@dataclass(frozen=True)
class PlanStatus:
    """The plan in effect for a user, why, and the billing period its quotas count over."""

    plan: Plan
    subscription: Subscription | None  # the granting one, else the newest one, else None
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


def _grace_ends_at(subscription: Subscription) -> datetime | None:
    if subscription.status != "past_due":
        return None
    since = subscription.past_due_since or subscription.updated_at
    return since + timedelta(days=get_settings().billing_grace_period_days)


def _grants(subscription: Subscription, now: datetime) -> bool:
    if subscription.plan is None:  # a price no plan is configured with
        return False
    if subscription.status in GRANTING_STATUSES:
        return True
    grace_ends = _grace_ends_at(subscription)
    return grace_ends is not None and now < grace_ends


def plan_in_effect(
    session: Session, *, user_id: uuid.UUID, now: datetime | None = None
) -> PlanStatus:
    now = now or datetime.now(UTC)
    plans = get_plans()
    subscriptions = session.scalars(
        select(Subscription).where(Subscription.user_id == user_id)
    ).all()
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


def lock_user(session: Session, *, user_id: uuid.UUID) -> User:
    """The active user, row-locked until the transaction ends (PostgreSQL; SQLite serialises
    writers anyway): per-user checks that must not race (quotas, one customer) run under it."""
    user = session.scalar(select(User).where(User.id == user_id).with_for_update())
    if user is None or not user.is_active:
        raise Unauthorized("the token's user no longer exists or is disabled")
    return user


def ensure_customer(session: Session, *, user_id: uuid.UUID) -> str:
    """The user's Stripe customer id, creating the customer on first use.

    Concurrent first checkouts must not create two customers: the user's row is locked while
    the customer is looked up and created, the creation carries an idempotency key derived
    from the user, and the row is inserted only if absent. The caller commits before doing
    anything else with Stripe, so the customer is never lost to a later failure.
    """
    user = lock_user(session, user_id=user_id)
    existing = _customer_id(session, user_id)
    if existing:
        return existing
    customer_id = stripe_api.create_customer(user_id=user_id, email=user.email)
    insert_new(
        session,
        BillingCustomer,
        [{"user_id": user_id, "stripe_customer_id": customer_id}],
        key="user_id",
    )
    stored = _customer_id(session, user_id)
    assert stored, "inserted or already there"
    return stored


def _customer_id(session: Session, user_id: uuid.UUID) -> str | None:
    return session.scalar(
        select(BillingCustomer.stripe_customer_id).where(BillingCustomer.user_id == user_id)
    )


def checkout_plan(session: Session, *, user_id: uuid.UUID, plan_name: str) -> Plan:
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
    current = plan_in_effect(session, user_id=user_id)
    if current.plan.name != FREE:
        raise Conflict(
            f"you are already on {current.plan.name} ({current.status}); change plans in the "
            "billing portal (POST /billing/portal)",
            extra={"plan": current.plan.name},
        )
    return plan


def portal_customer(session: Session, *, user_id: uuid.UUID) -> str:
    """The customer whose Billing Portal the user may open; `Conflict` before any checkout."""
    user = session.get(User, user_id)
    if user is None or not user.is_active:
        raise Unauthorized("the token's user no longer exists or is disabled")
    customer_id = _customer_id(session, user_id)
    if customer_id is None:
        raise Conflict("no billing account yet: subscribe first with POST /billing/checkout")
    return customer_id
