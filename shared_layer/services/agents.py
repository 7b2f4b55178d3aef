"""Agents: a user's named configurations (model, prompt, limits) that tasks run with.

Every lookup is scoped to the owner: another user's agent is `NotFound`, exactly like one
that does not exist, so ids reveal nothing. Names are unique per owner; the database's unique
constraint is the arbiter, so two concurrent creates of one name yield one agent and one
`Conflict`, never two rows or a 500.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared_layer.errors import Conflict, NotFound
from shared_layer.models import Agent
from shared_layer.schemas.agents import AGENT_SETTINGS
from shared_layer.services.accounts import get_active_user

__all__ = ["create_agent", "delete_agent", "get_agent", "list_agents", "update_agent"]


def _name_taken(name: str) -> Conflict:
    return Conflict(f"you already have an agent named {name!r}", extra={"field": "name"})


def _check_name_free(
    session: Session, *, owner_id: uuid.UUID, name: str, except_id: uuid.UUID | None = None
) -> None:
    query = select(Agent.id).where(Agent.owner_id == owner_id, Agent.name == name)
    if except_id is not None:
        query = query.where(Agent.id != except_id)
    if session.scalar(query) is not None:
        raise _name_taken(name)


def _flush(session: Session, *, name: str) -> None:
    try:
        session.flush()
    except IntegrityError as exc:  # a concurrent request took the name between check and write
        raise _name_taken(name) from exc


def create_agent(
    session: Session,
    *,
    owner_id: uuid.UUID,
    name: str,
    description: str | None = None,
    system: str | None = None,
    model: str | None = None,
    system_prompt: str | None = None,
    temperature: float | None = None,
    max_tokens: int | None = None,
    timeout_seconds: int | None = None,
) -> Agent:
    get_active_user(session, user_id=owner_id)  # a token outliving its user creates nothing
    _check_name_free(session, owner_id=owner_id, name=name)
    agent = Agent(
        owner_id=owner_id,
        name=name,
        description=description,
        system=system,
        model=model,
        system_prompt=system_prompt,
        temperature=temperature,
        max_tokens=max_tokens,
        timeout_seconds=timeout_seconds,
    )
    session.add(agent)
    _flush(session, name=name)
    return agent


def list_agents(
    session: Session, *, owner_id: uuid.UUID, limit: int, offset: int
) -> tuple[list[Agent], int]:
    """One page of the owner's agents, newest first, and how many there are in all."""
    total = session.scalar(
        select(func.count()).select_from(Agent).where(Agent.owner_id == owner_id)
    )
    items = session.scalars(
        select(Agent)
        .where(Agent.owner_id == owner_id)
        .order_by(Agent.created_at.desc(), Agent.id.desc())
        .limit(limit)
        .offset(offset)
    ).all()
    return list(items), int(total or 0)


def get_agent(session: Session, *, owner_id: uuid.UUID, agent_id: uuid.UUID) -> Agent:
    agent = session.scalar(select(Agent).where(Agent.id == agent_id, Agent.owner_id == owner_id))
    if agent is None:
        raise NotFound(f"no agent with id {agent_id}")
    return agent


def update_agent(
    session: Session,
    *,
    owner_id: uuid.UUID,
    agent_id: uuid.UUID,
    changes: Mapping[str, Any],
) -> Agent:
    """Apply `changes` (field -> new value; None resets a setting to the environment default)."""
    unknown = set(changes) - {"name", *AGENT_SETTINGS}
    if unknown:  # the schema forbids these; reaching here is a programming error
        raise ValueError(f"not agent settings: {sorted(unknown)}")
    agent = get_agent(session, owner_id=owner_id, agent_id=agent_id)
    name = changes.get("name")
    if "name" in changes and (name is None or not isinstance(name, str)):
        raise ValueError("an agent's name cannot be reset")
    if name is not None and name != agent.name:
        _check_name_free(session, owner_id=owner_id, name=name, except_id=agent.id)
    for field, value in changes.items():
        setattr(agent, field, value)
    _flush(session, name=agent.name)
    return agent


def delete_agent(session: Session, *, owner_id: uuid.UUID, agent_id: uuid.UUID) -> None:
    """Delete the agent; its tasks (and their steps) go with it (ON DELETE CASCADE)."""
    agent = get_agent(session, owner_id=owner_id, agent_id=agent_id)
    session.delete(agent)
    session.flush()
