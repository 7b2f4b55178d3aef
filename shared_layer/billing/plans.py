"""Plans: free, pro and team, with the limits configured in settings (`BILLING_PLANS`) and the
Stripe price that sells each paid one (`STRIPE_PRICE_PRO`, `STRIPE_PRICE_TEAM`).

A user with no subscription in effect is on `free`. Which subscription states are in effect
(and the grace period of `past_due`) is decided in `shared_layer.services.billing`.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase

from shared_layer.config import Settings, get_settings
from shared_layer.errors import InvalidInput
from shared_layer.plan_defaults import PLAN_NAMES, PlanLimits

__all__ = ["FREE", "Plan", "get_plan", "get_plans", "plan_for_price"]

FREE = "free"


@dataclass(frozen=True)
class Plan:
    name: str
    rank: int  # free < pro < team: the better plan wins when several subscriptions apply
    limits: PlanLimits
    price_id: str | None  # the Stripe price that sells it; None for free (or not configured)

    def allows_model(self, model: str) -> bool:
        return any(fnmatchcase(model, pattern) for pattern in self.limits.models)


def get_plans() -> dict[str, Plan]:
    """The plans under the current settings; made once per settings object, since every
    Stripe event and every task submission asks."""
    global _plans
    settings = get_settings()
    if _plans is None or _plans[0] is not settings:
        prices = {"pro": settings.stripe_price_pro, "team": settings.stripe_price_team}
        plans = {
            name: Plan(name, rank, settings.billing_plans[name], prices.get(name))
            for rank, name in enumerate(PLAN_NAMES)
        }
        _plans = (settings, plans)
    return dict(_plans[1])


_plans: tuple[Settings, dict[str, Plan]] | None = None


def get_plan(name: str) -> Plan:
    plans = get_plans()
    if name not in plans:
        raise InvalidInput(f"unknown plan {name!r}; the plans are {', '.join(plans)}")
    return plans[name]


def plan_for_price(price_id: str | None) -> str | None:
    """The plan a Stripe price sells; None for a price no plan is configured with."""
    if not price_id:
        return None
    for plan in get_plans().values():
        if plan.price_id == price_id:
            return plan.name
    return None
