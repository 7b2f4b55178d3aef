"""Plan limits, enforced: at task submission, at agent creation, and before each model call.

Monthly quotas (tasks, tokens) count what the user used in the billing period and, when used
up, raise `QuotaExceeded` (429) naming the limit and when it resets. What waiting cannot fix
(the number of agents, a model the plan does not include) raises `PlanLimitReached` (403).
Submission and agent creation hold the user's row lock while they count, so concurrent
requests cannot both slip under a limit.

Usage is counted from the usage ledger (services/usage_ledger.py), which deleting agents or
tasks leaves as it is; a run's tokens enter it when the run is settled, so the check before a
model call adds the tokens the running attempt has used so far. Plain SQL (`shared_layer.sql`);
task_runner, which holds an ORM session, passes `Db.of_session(session)`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from shared_layer.errors import PlanLimitReached, QuotaExceeded
from shared_layer.services.billing import PlanStatus, lock_user, plan_in_effect
from shared_layer.services.usage_ledger import period_totals
from shared_layer.sql import Db

__all__ = [
    "Usage",
    "check_model_call",
    "enforce_agent_creation",
    "enforce_task_submission",
    "usage_in_period",
]


@dataclass(frozen=True)
class Usage:
    tasks: int
    tokens: int
    agents: int


def usage_in_period(db: Db, *, user_id: uuid.UUID, status: PlanStatus) -> Usage:
    """Tasks submitted and tokens used in the billing period (the ledger), and agents owned
    now."""
    used = period_totals(db, user_id=user_id, start=status.period_start, end=status.period_end)
    return Usage(used.tasks, used.tokens, _agents_owned(db, user_id))


def _agents_owned(db: Db, user_id: uuid.UUID) -> int:
    owned = db.scalar("SELECT count(id) FROM agents WHERE owner_id = :id", {"id": user_id})
    return int(owned or 0)


def _describe(status: PlanStatus, limit: str, used: int, allowed: int) -> dict[str, Any]:
    return {
        "limit": limit,
        "plan": status.plan.name,
        "used": used,
        "maximum": allowed,
        "resets_at": status.period_end.isoformat(),
    }


def _exceeded(status: PlanStatus, limit: str, what: str, used: int, allowed: int) -> QuotaExceeded:
    retry_after = int((status.period_end - datetime.now(UTC)).total_seconds())
    return QuotaExceeded(
        f"the {status.plan.name} plan allows {allowed} {what} per billing period and "
        f"{used} are used; the quota resets at {status.period_end.isoformat()}",
        retry_after=retry_after,
        extra=_describe(status, limit, used, allowed),
    )


def _check_model(status: PlanStatus, model: str) -> None:
    if not status.plan.allows_model(model):
        allowed = list(status.plan.limits.models)
        raise PlanLimitReached(
            f"the {status.plan.name} plan does not include the model {model!r} "
            f"(it includes: {', '.join(allowed) or 'none'})",
            extra={"limit": "models", "plan": status.plan.name, "model": model},
        )


def enforce_task_submission(db: Db, *, user_id: uuid.UUID, model: str) -> PlanStatus:
    """Refuse a task the user's plan does not allow now; the plan status when it does."""
    lock_user(db, user_id=user_id)
    status = plan_in_effect(db, user_id=user_id)
    _check_model(status, model)
    limits = status.plan.limits
    usage = usage_in_period(db, user_id=user_id, status=status)
    if usage.tasks >= limits.tasks_per_month:
        raise _exceeded(status, "tasks_per_month", "tasks", usage.tasks, limits.tasks_per_month)
    if usage.tokens >= limits.tokens_per_month:
        raise _exceeded(status, "tokens_per_month", "tokens", usage.tokens, limits.tokens_per_month)
    return status


def enforce_agent_creation(db: Db, *, user_id: uuid.UUID) -> None:
    """Refuse a new agent beyond the plan's number of agents."""
    lock_user(db, user_id=user_id)
    status = plan_in_effect(db, user_id=user_id)
    allowed = status.plan.limits.agents
    owned = _agents_owned(db, user_id)
    if owned >= allowed:
        raise PlanLimitReached(
            f"the {status.plan.name} plan allows {allowed} agents and you have {owned}; "
            "delete one or upgrade",
            extra={"limit": "agents", "plan": status.plan.name, "used": owned, "maximum": allowed},
        )


def check_model_call(db: Db, *, user_id: uuid.UUID, model: str, run_tokens: int = 0) -> None:
    """Before a model call of a running task: the model is in the plan and the tokens used in
    the period, plus `run_tokens` this run has used so far, leave some of the quota."""
    status = plan_in_effect(db, user_id=user_id)
    _check_model(status, model)
    usage = usage_in_period(db, user_id=user_id, status=status)
    used = usage.tokens + run_tokens
    allowed = status.plan.limits.tokens_per_month
    if used >= allowed:
        raise _exceeded(status, "tokens_per_month", "tokens", used, allowed)
