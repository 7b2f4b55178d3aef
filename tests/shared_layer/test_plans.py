"""Plans from configuration: defaults, BILLING_PLANS overrides, prices, model patterns, and the
calendar month a free plan's quotas count over."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from shared_layer.billing.plans import get_plan, get_plans, plan_for_price
from shared_layer.config import Settings
from shared_layer.database import session_scope
from shared_layer.errors import InvalidInput
from shared_layer.models import Subscription
from shared_layer.services.billing import calendar_month, plan_in_effect
from shared_layer.sql import transaction


def test_the_default_plans_rise_from_free_to_team_and_allow_any_model():
    plans = get_plans()

    assert list(plans) == ["free", "pro", "team"]
    assert [p.rank for p in plans.values()] == [0, 1, 2]
    tasks = [p.limits.tasks_per_month for p in plans.values()]
    assert tasks == sorted(tasks)
    assert all(p.allows_model("anything-at-all") for p in plans.values())


def test_billing_plans_changes_only_the_fields_it_names(settings_env):
    settings_env(BILLING_PLANS='{"free": {"agents": 3, "models": ["gpt-4o-mini"]}}')

    free, pro = get_plan("free"), get_plan("pro")

    assert (free.limits.agents, free.limits.tasks_per_month) == (3, 100)
    assert free.allows_model("gpt-4o-mini")
    assert not free.allows_model("gpt-4o")
    assert pro.limits.agents == 100


@pytest.mark.parametrize(
    "value",
    ['{"gold": {"agents": 1}}', '{"free": {"agents": -1}}', '{"free": {"seats": 2}}', "{not json"],
)
def test_a_bad_billing_plans_value_stops_the_settings_naming_it(value):
    with pytest.raises(ValidationError, match="billing_plans"):
        Settings(billing_plans=value)


def test_prices_name_their_plans_and_unknown_prices_none(settings_env):
    settings_env(STRIPE_PRICE_PRO="price_p", STRIPE_PRICE_TEAM="price_t")

    assert (plan_for_price("price_p"), plan_for_price("price_t")) == ("pro", "team")
    assert plan_for_price("price_other") is None
    assert plan_for_price(None) is None
    assert get_plan("free").price_id is None


def test_an_unknown_plan_name_is_invalid_input():
    with pytest.raises(InvalidInput, match="gold"):
        get_plan("gold")


def test_model_patterns_are_shell_patterns_matched_case_sensitively(settings_env):
    settings_env(BILLING_PLANS='{"pro": {"models": ["gpt-4o*", "llama-?b"]}}')
    pro = get_plan("pro")

    assert pro.allows_model("gpt-4o-mini")
    assert pro.allows_model("llama-8b")
    assert not pro.allows_model("GPT-4o")
    assert not pro.allows_model("llama-70b")


@pytest.mark.parametrize(
    ("now", "start", "end"),
    [
        (
            datetime(2026, 3, 15, 12, tzinfo=UTC),
            datetime(2026, 3, 1, tzinfo=UTC),
            datetime(2026, 4, 1, tzinfo=UTC),
        ),
        (
            datetime(2026, 12, 31, 23, 59, tzinfo=UTC),
            datetime(2026, 12, 1, tzinfo=UTC),
            datetime(2027, 1, 1, tzinfo=UTC),
        ),
    ],
)
def test_the_free_period_is_the_calendar_month_in_utc(now, start, end):
    assert calendar_month(now) == (start, end)


def test_the_grace_period_of_a_past_due_subscription_is_configurable(db, settings_env, user_token):
    user_id, _ = user_token()
    with session_scope() as session:
        session.add(
            Subscription(
                id="sub_late",
                user_id=user_id,
                stripe_customer_id="cus_late",
                plan="team",
                status="past_due",
                past_due_since=datetime.now(UTC) - timedelta(days=4),
                version=1,
            )
        )

    def plan() -> str:
        with transaction() as sql:
            return plan_in_effect(sql, user_id=user_id).plan.name

    assert plan() == "team"  # 4 days into the default 7
    settings_env(BILLING_GRACE_PERIOD_DAYS="3")
    assert plan() == "free"
