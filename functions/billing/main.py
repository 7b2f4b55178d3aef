"""billing: Stripe Checkout and Billing Portal sessions; the caller's plan and usage.

Stripe is called outside any transaction except where it must not race: the customer is
created (once per user) under the user's row lock and committed before the Checkout Session
is asked for, so a failed checkout never loses the customer.
"""

from __future__ import annotations

import flask
import functions_framework

from shared_layer.billing import stripe_api
from shared_layer.config import get_settings
from shared_layer.http import ApiRequest, Router
from shared_layer.schemas.billing import (
    CheckoutCreate,
    CheckoutSessionPublic,
    LimitUsage,
    PlanUsage,
    PortalSessionPublic,
    SubscriptionPublic,
)
from shared_layer.services import billing as billing_service
from shared_layer.services import quotas
from shared_layer.sql import transaction

router = Router("billing")


@router.route("POST", "/checkout", auth=True)
def checkout(req: ApiRequest) -> tuple[CheckoutSessionPublic, int]:
    body = req.parse(CheckoutCreate)
    with transaction() as db:
        plan = billing_service.checkout_plan(db, user_id=req.caller, plan_name=body.plan)
    with transaction() as db:
        customer_id = billing_service.ensure_customer(db, user_id=req.caller)
    assert plan.price_id, "checkout_plan refuses a plan without a price"
    settings = get_settings()
    created = stripe_api.create_checkout_session(
        customer_id=customer_id,
        user_id=req.caller,
        plan=plan.name,
        price_id=plan.price_id,
        success_url=settings.billing_success_url,
        cancel_url=settings.billing_cancel_url,
    )
    return CheckoutSessionPublic(id=created.id, url=created.url, plan=body.plan), 201


@router.route("POST", "/portal", auth=True)
def portal(req: ApiRequest) -> tuple[PortalSessionPublic, int]:
    with transaction() as db:
        customer_id = billing_service.portal_customer(db, user_id=req.caller)
    url = stripe_api.create_portal_session(
        customer_id=customer_id, return_url=get_settings().billing_portal_return_url
    )
    return PortalSessionPublic(url=url), 201


@router.route("GET", "/subscription", auth=True)
def subscription(req: ApiRequest) -> SubscriptionPublic:
    with transaction() as db:
        status = billing_service.plan_in_effect(db, user_id=req.caller)
        used = quotas.usage_in_period(db, user_id=req.caller, status=status)
    limits, sub, resets = status.plan.limits, status.subscription, status.period_end
    return SubscriptionPublic(
        plan=status.plan.name,
        status=status.status,
        subscription_id=sub.id if sub else None,
        current_period_end=sub.current_period_end if sub else None,
        cancel_at_period_end=sub.cancel_at_period_end if sub else False,
        grace_period_ends_at=status.grace_ends_at,
        period_start=status.period_start,
        period_end=status.period_end,
        models=list(limits.models),
        usage=PlanUsage(
            tasks=LimitUsage.of(used.tasks, limits.tasks_per_month, resets),
            tokens=LimitUsage.of(used.tokens, limits.tokens_per_month, resets),
            agents=LimitUsage.of(used.agents, limits.agents, None),
        ),
    )


@functions_framework.http
def billing(request: flask.Request) -> flask.Response:
    return router.dispatch(request)
