"""How an agent runs: the environment's defaults, overlaid with the agent's own settings.

Two agent systems exist. `simple` answers in one model call with no memory; `enhanced` plans
first, then answers, and sees the agent's recent conversation. The environment chooses the
default system and limits (`AGENT_SYSTEM`, `OPENAI_MODEL`, `AGENT_MAX_TOKENS`, ...); an agent's
non-NULL columns override them. The result is an `AgentRunConfig`: frozen and validated, so a
runner never meets a temperature of 7 or a timeout of zero halfway through a task.

`AgentRunConfig` holds the only copy of the rules an agent's settings follow (ranges, lengths,
a model name, a system prompt that says something). The agents API applies them by resolving
the agent it is about to store (services/agents.py), so it accepts exactly the agents a
runner can run, and refuses the others with the same errors a runner would give.

An agent is read through `AgentSettings`, the attributes resolving it needs: a record
(`shared_layer.services.agents.AgentRecord`) or the ORM's `Agent` alike.
"""

from __future__ import annotations

import uuid
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from shared_layer.config import get_settings
from shared_layer.errors import InvalidInput
from shared_layer.http import invalid_input_from
from shared_layer.openai_config import validate_model

__all__ = [
    "DEFAULT_SYSTEM_PROMPTS",
    "AgentRunConfig",
    "AgentSettings",
    "AgentSystemName",
    "get_agent_config_for_system",
    "get_agent_system",
    "resolve_agent_config",
    "should_use_enhanced_agent",
]

AgentSystemName = Literal["simple", "enhanced"]

DEFAULT_SYSTEM_PROMPTS: dict[str, str] = {
    "simple": "You are a helpful assistant. Answer the user's request directly and concisely.",
    "enhanced": (
        "You are a careful assistant. Use the conversation so far, work from a short plan, "
        "and give a complete, well-structured answer to the user's request."
    ),
}


class AgentSettings(Protocol):
    """The attributes of an agent that decide how it runs (None: the environment's default)."""

    @property
    def id(self) -> uuid.UUID: ...
    @property
    def system(self) -> str | None: ...
    @property
    def model(self) -> str | None: ...
    @property
    def system_prompt(self) -> str | None: ...
    @property
    def temperature(self) -> float | None: ...
    @property
    def max_tokens(self) -> int | None: ...
    @property
    def timeout_seconds(self) -> int | None: ...


# The agent columns that override an environment default when they are not NULL.
_OVERRIDABLE = ("model", "system_prompt", "temperature", "max_tokens", "timeout_seconds")


class AgentRunConfig(BaseModel):
    """Everything a runner needs to know to run one agent's task."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    system: AgentSystemName
    model: str
    temperature: float = Field(ge=0, le=2, allow_inf_nan=False)
    max_tokens: int = Field(ge=1, le=128_000)
    timeout_seconds: int = Field(ge=1, le=3600)
    memory_messages: int = Field(ge=0, le=200)
    system_prompt: str = Field(max_length=20_000)

    @field_validator("model")
    @classmethod
    def _model_name(cls, value: str) -> str:
        if not validate_model(value):
            raise ValueError(f"{value!r} is not a model name")
        return value

    @field_validator("system_prompt")
    @classmethod
    def _says_something(cls, value: str) -> str:
        # A blank prompt would be sent as it is: the model gets no instructions at all.
        if not value.strip():
            raise ValueError("must contain a character that is not whitespace")
        return value

    @property
    def model_calls(self) -> int:
        """Model calls one task makes: the lease a runner takes must cover them all."""
        return 2 if self.system == "enhanced" else 1


def get_agent_system() -> AgentSystemName:
    """The environment's default agent system."""
    return get_settings().agent_system


def should_use_enhanced_agent(agent: AgentSettings | None = None) -> bool:
    """Whether `agent` (or, without one, the environment) uses the enhanced system."""
    system = agent.system if agent is not None and agent.system else get_agent_system()
    return system == "enhanced"


def get_agent_config_for_system(system: str) -> AgentRunConfig:
    """The environment's defaults for a system; only `enhanced` keeps memory."""
    if system not in DEFAULT_SYSTEM_PROMPTS:
        raise InvalidInput(
            f"unknown agent system {system!r}; expected simple or enhanced",
            errors=[{"field": "system", "message": "expected simple or enhanced"}],
        )
    settings = get_settings()
    return AgentRunConfig(
        system=system,  # checked above
        model=settings.openai_model,
        temperature=settings.openai_temperature,
        max_tokens=settings.agent_max_tokens,
        timeout_seconds=settings.agent_timeout_seconds,
        memory_messages=settings.agent_memory_messages if system == "enhanced" else 0,
        system_prompt=DEFAULT_SYSTEM_PROMPTS[system],
    )


def resolve_agent_config(agent: AgentSettings) -> AgentRunConfig:
    """The agent's run configuration; `InvalidInput` naming the fields whose values break a
    rule (from a request, or stored before a limit tightened, or by hand)."""
    base = get_agent_config_for_system(agent.system or get_agent_system())
    overrides = {
        name: getattr(agent, name) for name in _OVERRIDABLE if getattr(agent, name) is not None
    }
    try:
        return AgentRunConfig.model_validate({**base.model_dump(), **overrides})
    except ValidationError as exc:  # the same problem a request body's errors make
        raise invalid_input_from(exc, where="agent settings") from None
