"""Agent configuration: environment defaults per system, overlaid with an agent's own columns."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import ValidationError

from shared_layer.agent_config import (
    DEFAULT_SYSTEM_PROMPTS,
    AgentRunConfig,
    get_agent_config_for_system,
    get_agent_system,
    resolve_agent_config,
    should_use_enhanced_agent,
)
from shared_layer.database import session_scope
from shared_layer.errors import InvalidInput
from shared_layer.models import Agent
from shared_layer.services.agents import get_agent
from shared_layer.sql import transaction

ENV = {
    "OPENAI_MODEL": "env-model",
    "OPENAI_TEMPERATURE": "0.3",
    "AGENT_MAX_TOKENS": "200",
    "AGENT_TIMEOUT_SECONDS": "20",
    "AGENT_MEMORY_MESSAGES": "4",
}


@pytest.fixture
def env(settings_env):
    settings_env(**ENV)


def test_simple_system_defaults_come_from_the_environment_without_memory(env):
    config = get_agent_config_for_system("simple")
    assert config == AgentRunConfig(
        system="simple",
        model="env-model",
        temperature=0.3,
        max_tokens=200,
        timeout_seconds=20,
        memory_messages=0,
        system_prompt=DEFAULT_SYSTEM_PROMPTS["simple"],
    )
    assert config.model_calls == 1


def test_enhanced_system_defaults_keep_the_environments_memory(env):
    config = get_agent_config_for_system("enhanced")
    assert config.memory_messages == 4
    assert config.system_prompt == DEFAULT_SYSTEM_PROMPTS["enhanced"]
    assert config.model_calls == 2


def test_an_unknown_system_is_invalid_input():
    with pytest.raises(InvalidInput, match="unknown agent system 'clever'"):
        get_agent_config_for_system("clever")


def test_the_default_system_follows_agent_system_setting(settings_env):
    assert get_agent_system() == "simple"
    assert should_use_enhanced_agent() is False
    settings_env(AGENT_SYSTEM="enhanced")
    assert get_agent_system() == "enhanced"
    assert should_use_enhanced_agent() is True


def test_an_agents_own_system_wins_over_the_environments(settings_env):
    assert should_use_enhanced_agent(Agent(system="enhanced")) is True
    assert should_use_enhanced_agent(Agent(system=None)) is False
    settings_env(AGENT_SYSTEM="enhanced")
    assert should_use_enhanced_agent(Agent(system="simple")) is False
    assert should_use_enhanced_agent(Agent(system=None)) is True


def test_an_agent_without_overrides_runs_with_the_environment_defaults(env):
    assert resolve_agent_config(Agent(name="plain")) == get_agent_config_for_system("simple")


def test_an_agents_non_null_columns_override_the_defaults(env):
    agent = Agent(
        system="enhanced",
        model="agent-model",
        system_prompt="You are a pirate.",
        temperature=0.0,  # falsy, still an override
        max_tokens=50,
        timeout_seconds=5,
    )
    config = resolve_agent_config(agent)
    assert config.system == "enhanced"
    assert config.model == "agent-model"
    assert config.system_prompt == "You are a pirate."
    assert config.temperature == 0.0
    assert (config.max_tokens, config.timeout_seconds) == (50, 5)
    assert config.memory_messages == 4  # the environment's, as agents have no such column


def test_overrides_stored_in_the_database_are_applied(db, env, queued_task):
    created = queued_task(system="enhanced", temperature=0.0, model="stored-model")
    with session_scope() as session:
        config = resolve_agent_config(session.get(Agent, created.agent_id))
    assert (config.system, config.temperature, config.model) == ("enhanced", 0.0, "stored-model")
    assert config.max_tokens == 200  # NULL column: the environment's default


def test_an_agent_record_read_in_plain_sql_resolves_as_its_orm_row_does(db, env, queued_task):
    created = queued_task(system="enhanced", temperature=0.0, model="stored-model")
    with transaction() as sql:
        record = get_agent(sql, owner_id=created.owner_id, agent_id=created.agent_id)
    with session_scope() as session:
        orm = resolve_agent_config(session.get(Agent, created.agent_id))
    assert resolve_agent_config(record) == orm


def test_the_agent_schemas_config_and_services_import_no_sqlalchemy():
    """What the agents function loads to read agents and tasks stands apart from the ORM."""
    modules = (
        "shared_layer.agent_config",
        "shared_layer.schemas.agents",
        "shared_layer.services.agents",
        "shared_layer.services.tasks",
        "shared_layer.services.quotas",
        "shared_layer.services.billing",
    )
    probe = f"import sys; import {', '.join(modules)}; print('sqlalchemy' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("columns", "field"),
    [
        ({"temperature": 2.5}, "temperature"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"timeout_seconds": 0}, "timeout_seconds"),
        ({"timeout_seconds": 3601}, "timeout_seconds"),
        ({"model": "not a model"}, "model"),
        ({"system_prompt": ""}, "system_prompt"),
        ({"system_prompt": " \n\t"}, "system_prompt"),
        ({"max_tokens": 128_001}, "max_tokens"),
    ],
)
def test_an_out_of_range_stored_value_is_invalid_input_naming_the_field(columns, field):
    with pytest.raises(InvalidInput) as caught:
        resolve_agent_config(Agent(**columns))
    assert [e["field"] for e in caught.value.errors] == [field]
    assert field in caught.value.detail


def test_an_agent_with_an_unknown_system_is_invalid_input():
    with pytest.raises(InvalidInput, match="unknown agent system"):
        resolve_agent_config(Agent(system="clever"))


def test_a_run_config_is_frozen_and_refuses_unknown_fields(env):
    config = get_agent_config_for_system("simple")
    with pytest.raises(ValidationError):
        config.temperature = 1.0  # type: ignore[misc]
    with pytest.raises(ValidationError, match="tools"):
        AgentRunConfig(**config.model_dump(), tools=["search"])
