"""The default plans and model prices: data the settings start from (BILLING_PLANS and
MODEL_PRICES override them), kept apart so billing can use them without the settings."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

# List prices in USD micros per million tokens (input, output); MODEL_PRICES (JSON) replaces them.
DEFAULT_MODEL_PRICES: dict[str, tuple[int, int]] = {
    "offline": (0, 0),
    "gpt-4o-mini": (150_000, 600_000),
    "gpt-4o": (2_500_000, 10_000_000),
    "gpt-4.1-nano": (100_000, 400_000),
    "gpt-4.1-mini": (400_000, 1_600_000),
    "gpt-4.1": (2_000_000, 8_000_000),
}


class PlanLimits(BaseModel):
    """What a plan allows per billing period (tasks, tokens), at once (agents), and which
    models (shell patterns: `gpt-4o*`; `*` is any). 0 means none."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tasks_per_month: int = Field(ge=0)
    tokens_per_month: int = Field(ge=0)
    agents: int = Field(ge=0)
    models: tuple[str, ...] = ("*",)


PLAN_NAMES = ("free", "pro", "team")  # in rank order; a user with no subscription is on free
# Model names depend on the deployment (OpenAI, a local server), so no plan restricts them by
# default; restrict with BILLING_PLANS='{"free": {"models": ["gpt-4o-mini"]}}'.
DEFAULT_PLANS: dict[str, dict[str, Any]] = {
    "free": {"tasks_per_month": 100, "tokens_per_month": 200_000, "agents": 10},
    "pro": {"tasks_per_month": 5_000, "tokens_per_month": 10_000_000, "agents": 100},
    "team": {"tasks_per_month": 50_000, "tokens_per_month": 100_000_000, "agents": 1_000},
}
