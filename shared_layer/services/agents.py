"""Agents: a user's named configurations (model, prompt, limits) that tasks run with.

Every lookup is scoped to the owner: another user's agent is `NotFound`, exactly like one
that does not exist, so ids reveal nothing. Names are unique per owner; the database's unique
constraint is the arbiter, so two concurrent creates of one name yield one agent and one
`Conflict`, never two rows or a 500. Plain SQL (`shared_layer.sql`), returning `AgentRecord`s.

An agent is stored only if a runner can run it: create and update resolve the run
configuration of the agent as it would be stored (its settings over the environment's
defaults: `resolve_agent_config`, the runtime's own check), and refuse it with `InvalidInput`
naming the fields otherwise.

Row locks follow the one order, user → agent → task (services/task_claims.py explains it).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from shared_layer.agent_config import resolve_agent_config
from shared_layer.errors import Conflict, NotFound
from shared_layer.schemas.agents import AGENT_SETTINGS
from shared_layer.services.users import get_active_user
from shared_layer.sql import Db, UniqueViolation, as_datetime, as_uuid

__all__ = [
    "AGENT_COLUMNS",
    "AgentRecord",
    "agent_from_row",
    "create_agent",
    "delete_agent",
    "get_agent",
    "list_agents",
    "update_agent",
]

AGENT_COLUMNS = (
    "id, owner_id, name, description, system, model, system_prompt, temperature, max_tokens,"
    " timeout_seconds, created_at, updated_at"
)


@dataclass(frozen=True)
class AgentRecord:
    """An `agents` row; a None setting means "use the environment default"."""

    id: uuid.UUID
    owner_id: uuid.UUID
    name: str
    description: str | None
    system: str | None
    model: str | None
    system_prompt: str | None
    temperature: float | None
    max_tokens: int | None
    timeout_seconds: int | None
    created_at: datetime
    updated_at: datetime


def agent_from_row(row: Mapping[str, Any]) -> AgentRecord:
    """An `agents` row (AGENT_COLUMNS) as a record, values as the ORM would give them."""
    temperature = row["temperature"]
    return AgentRecord(
        id=as_uuid(row["id"]),
        owner_id=as_uuid(row["owner_id"]),
        name=row["name"],
        description=row["description"],
        system=row["system"],
        model=row["model"],
        system_prompt=row["system_prompt"],
        temperature=None if temperature is None else float(temperature),
        max_tokens=row["max_tokens"],
        timeout_seconds=row["timeout_seconds"],
        created_at=as_datetime(row["created_at"]),
        updated_at=as_datetime(row["updated_at"]),
    )


def _name_taken(name: str) -> Conflict:
    return Conflict(f"you already have an agent named {name!r}", extra={"field": "name"})


def _check_name_free(
    db: Db, *, owner_id: uuid.UUID, name: str, except_id: uuid.UUID | None = None
) -> None:
    sql = "SELECT id FROM agents WHERE owner_id = :owner_id AND name = :name"
    params: dict[str, Any] = {"owner_id": owner_id, "name": name}
    if except_id is not None:
        sql += " AND id != :except_id"
        params["except_id"] = except_id
    if db.one(sql, params) is not None:
        raise _name_taken(name)


def create_agent(
    db: Db,
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
) -> AgentRecord:
    get_active_user(db, user_id=owner_id)  # a token outliving its user creates nothing
    _check_name_free(db, owner_id=owner_id, name=name)
    now = datetime.now(UTC)
    agent = AgentRecord(
        id=uuid.uuid4(),
        owner_id=owner_id,
        name=name,
        description=description,
        system=system,
        model=model,
        system_prompt=system_prompt,
        temperature=None if temperature is None else float(temperature),
        max_tokens=max_tokens,
        timeout_seconds=timeout_seconds,
        created_at=now,
        updated_at=now,
    )
    resolve_agent_config(agent)  # runnable, or InvalidInput naming the fields
    try:
        db.insert("agents", vars(agent))
    except UniqueViolation as exc:  # a concurrent request took the name between check and write
        raise _name_taken(name) from exc
    return agent


def list_agents(
    db: Db, *, owner_id: uuid.UUID, limit: int, offset: int
) -> tuple[list[AgentRecord], int]:
    """One page of the owner's agents, newest first, and how many there are in all."""
    params = {"owner_id": owner_id, "limit": limit, "offset": offset}
    total = db.scalar("SELECT count(*) FROM agents WHERE owner_id = :owner_id", params)
    rows = db.all(
        f"SELECT {AGENT_COLUMNS} FROM agents WHERE owner_id = :owner_id"  # noqa: S608
        " ORDER BY created_at DESC, id DESC LIMIT :limit OFFSET :offset",
        params,
    )
    return [agent_from_row(row) for row in rows], int(total or 0)


def get_agent(
    db: Db, *, owner_id: uuid.UUID, agent_id: uuid.UUID, lock: bool = False
) -> AgentRecord:
    """The owner's agent; with `lock`, held `FOR KEY SHARE` until the transaction ends, so it
    cannot be deleted under a task being inserted for it (a DELETE that came first makes
    this NotFound, not the INSERT a foreign-key violation)."""
    row = db.one(
        f"SELECT {AGENT_COLUMNS} FROM agents"  # noqa: S608
        f" WHERE id = :id AND owner_id = :owner_id{db.for_key_share if lock else ''}",
        {"id": agent_id, "owner_id": owner_id},
    )
    if row is None:
        raise NotFound(f"no agent with id {agent_id}")
    return agent_from_row(row)


def update_agent(
    db: Db,
    *,
    owner_id: uuid.UUID,
    agent_id: uuid.UUID,
    changes: Mapping[str, Any],
) -> AgentRecord:
    """Apply `changes` (field -> new value; None resets a setting to the environment default)
    if they leave an agent a runner can run (else `InvalidInput`, nothing written)."""
    unknown = set(changes) - {"name", *AGENT_SETTINGS}
    if unknown:  # the schema forbids these; reaching here is a programming error
        raise ValueError(f"not agent settings: {sorted(unknown)}")
    name = changes.get("name")
    if "name" in changes and (name is None or not isinstance(name, str)):
        raise ValueError("an agent's name cannot be reset")
    agent = get_agent(db, owner_id=owner_id, agent_id=agent_id)
    resolve_agent_config(replace(agent, **changes))  # the agent it would leave: runnable
    if name is not None and name != agent.name:
        _check_name_free(db, owner_id=owner_id, name=name, except_id=agent.id)
    changed = {f: v for f, v in changes.items() if v != getattr(agent, f)}
    if not changed:  # as the ORM did: nothing changed, nothing written, updated_at kept
        return agent
    values = {**changed, "updated_at": datetime.now(UTC)}
    assignments = ", ".join(f"{column} = :{column}" for column in values)  # names checked above
    try:
        db.execute(
            f"UPDATE agents SET {assignments} WHERE id = :agent_id",  # noqa: S608
            {**values, "agent_id": agent.id},
        )
    except UniqueViolation as exc:  # a concurrent request took the name
        raise _name_taken(name or agent.name) from exc
    return get_agent(db, owner_id=owner_id, agent_id=agent_id)


def delete_agent(db: Db, *, owner_id: uuid.UUID, agent_id: uuid.UUID) -> None:
    """Delete the agent; its tasks (and their steps) go with it (ON DELETE CASCADE).

    It locks the agent, then its tasks: the one order (user → agent → task) every writer of
    tasks follows (services/task_claims.py), so it never deadlocks with task_runner."""
    deleted = db.execute(
        "DELETE FROM agents WHERE id = :id AND owner_id = :owner_id",
        {"id": agent_id, "owner_id": owner_id},
    )
    if deleted == 0:
        raise NotFound(f"no agent with id {agent_id}")
