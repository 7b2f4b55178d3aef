"""Tasks from the caller's side: submit, read, list and cancel.

Running a task belongs to `task_runner`; here a task is only stored `queued` (the adapter
commits, then publishes its id), beside its entry in the usage ledger, which the quotas count.
Cancelling is a conditional UPDATE from `queued`, so it races safely with a runner's claim:
exactly one of them moves the task on. Plain SQL
(`shared_layer.sql`), returning `TaskRecord`s and `TaskStepRecord`s.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from shared_layer.config import get_settings
from shared_layer.errors import Conflict, InvalidInput, NotFound
from shared_layer.services.agents import get_agent
from shared_layer.services.billing import lock_user
from shared_layer.services.quotas import enforce_task_submission
from shared_layer.services.usage_ledger import record_submission
from shared_layer.sql import Db, as_datetime, as_json, as_uuid

__all__ = [
    "TASK_COLUMNS",
    "TaskRecord",
    "TaskStepRecord",
    "cancel_task",
    "get_task",
    "list_tasks",
    "submit_task",
]

QUEUED, CANCELED = "queued", "canceled"

TASK_COLUMNS = (
    "id, agent_id, owner_id, status, input, result, error, provider, model, prompt_tokens,"
    " completion_tokens, attempts, lease_expires_at, created_at, started_at, finished_at,"
    " updated_at"
)
_STEP_COLUMNS = "position, kind, content, prompt_tokens, completion_tokens, duration_ms, created_at"


@dataclass(frozen=True)
class TaskStepRecord:
    """One thing the agent did while running a task (a model call, a tool call)."""

    position: int
    kind: str
    content: dict[str, Any]
    prompt_tokens: int
    completion_tokens: int
    duration_ms: float
    created_at: datetime


@dataclass(frozen=True)
class TaskRecord:
    """A `tasks` row, with its steps (by position) where they were read."""

    id: uuid.UUID
    agent_id: uuid.UUID
    owner_id: uuid.UUID
    status: str
    input: str
    result: str | None
    error: str | None
    provider: str | None
    model: str | None
    prompt_tokens: int
    completion_tokens: int
    attempts: int
    lease_expires_at: datetime | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    steps: tuple[TaskStepRecord, ...] = field(default=(), compare=False)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def _maybe_datetime(value: Any) -> datetime | None:
    return None if value is None else as_datetime(value)


def task_from_row(row: Mapping[str, Any]) -> TaskRecord:
    """A `tasks` row (TASK_COLUMNS) as a record, values as the ORM would give them."""
    return TaskRecord(
        id=as_uuid(row["id"]),
        agent_id=as_uuid(row["agent_id"]),
        owner_id=as_uuid(row["owner_id"]),
        status=row["status"],
        input=row["input"],
        result=row["result"],
        error=row["error"],
        provider=row["provider"],
        model=row["model"],
        prompt_tokens=row["prompt_tokens"],
        completion_tokens=row["completion_tokens"],
        attempts=row["attempts"],
        lease_expires_at=_maybe_datetime(row["lease_expires_at"]),
        created_at=as_datetime(row["created_at"]),
        started_at=_maybe_datetime(row["started_at"]),
        finished_at=_maybe_datetime(row["finished_at"]),
        updated_at=as_datetime(row["updated_at"]),
    )


def _step_from_row(row: Mapping[str, Any]) -> TaskStepRecord:
    return TaskStepRecord(
        position=row["position"],
        kind=row["kind"],
        content=as_json(row["content"]),
        prompt_tokens=row["prompt_tokens"],
        completion_tokens=row["completion_tokens"],
        duration_ms=float(row["duration_ms"]),
        created_at=as_datetime(row["created_at"]),
    )


def submit_task(db: Db, *, owner_id: uuid.UUID, agent_id: uuid.UUID, input: str) -> TaskRecord:
    """Store a queued task for one of the owner's agents; the caller publishes it after commit.

    Locks in the one order (user → agent → task, services/task_claims.py): the user first
    (`lock_user`), so concurrent submissions count one after another, then the agent, so it
    cannot be deleted before the task is inserted."""
    settings = get_settings()
    limit = settings.task_max_input_chars
    if not input or len(input) > limit:
        raise InvalidInput(f"input must be 1 to {limit} characters")
    lock_user(db, user_id=owner_id)  # a disabled user's token runs nothing (401)
    agent = get_agent(db, owner_id=owner_id, agent_id=agent_id, lock=True)
    model = agent.model or settings.openai_model
    enforce_task_submission(db, user_id=owner_id, model=model)  # plan limits: 429 / 403
    now = datetime.now(UTC)
    task = TaskRecord(
        id=uuid.uuid4(),
        agent_id=agent.id,
        owner_id=owner_id,
        status=QUEUED,
        input=input,
        result=None,
        error=None,
        provider=None,
        model=None,
        prompt_tokens=0,
        completion_tokens=0,
        attempts=0,
        lease_expires_at=None,
        created_at=now,
        started_at=None,
        finished_at=None,
        updated_at=now,
    )
    db.insert("tasks", {k: v for k, v in vars(task).items() if k != "steps"})
    record_submission(db, user_id=owner_id, agent_id=agent.id, task_id=task.id, at=now)
    return task


def get_task(
    db: Db, *, owner_id: uuid.UUID, task_id: uuid.UUID, with_steps: bool = True
) -> TaskRecord:
    """The owner's task (with its steps, by position, unless told otherwise); anyone else's is
    NotFound."""
    row = db.one(
        f"SELECT {TASK_COLUMNS} FROM tasks WHERE id = :id AND owner_id = :owner_id",  # noqa: S608
        {"id": task_id, "owner_id": owner_id},
    )
    if row is None:
        raise NotFound(f"no task with id {task_id}")
    task = task_from_row(row)
    if not with_steps:
        return task
    steps = db.all(
        f"SELECT {_STEP_COLUMNS} FROM task_steps WHERE task_id = :id ORDER BY position",  # noqa: S608
        {"id": task.id},
    )
    return replace(task, steps=tuple(_step_from_row(step) for step in steps))


def list_tasks(
    db: Db,
    *,
    owner_id: uuid.UUID,
    limit: int,
    offset: int,
    status: str | None = None,
    agent_id: uuid.UUID | None = None,
) -> tuple[list[TaskRecord], int]:
    """One page of the owner's tasks, newest first, and how many match in all."""
    where = "owner_id = :owner_id"
    params: dict[str, Any] = {"owner_id": owner_id, "limit": limit, "offset": offset}
    if status is not None:
        where += " AND status = :status"
        params["status"] = status
    if agent_id is not None:
        where += " AND agent_id = :agent_id"
        params["agent_id"] = agent_id
    total = db.scalar(f"SELECT count(*) FROM tasks WHERE {where}", params)  # noqa: S608
    rows = db.all(
        f"SELECT {TASK_COLUMNS} FROM tasks WHERE {where}"  # noqa: S608
        " ORDER BY created_at DESC, id DESC LIMIT :limit OFFSET :offset",
        params,
    )
    return [task_from_row(row) for row in rows], int(total or 0)


def cancel_task(db: Db, *, owner_id: uuid.UUID, task_id: uuid.UUID) -> TaskRecord:
    """Cancel a queued task. Cancelling a cancelled task is a no-op (retries are safe);
    a task that is running or finished can no longer be cancelled: `Conflict`.
    """
    now = datetime.now(UTC)
    moved = db.execute(
        "UPDATE tasks SET status = :canceled, finished_at = :now, updated_at = :now"
        " WHERE id = :id AND owner_id = :owner_id AND status = :queued",
        {"canceled": CANCELED, "queued": QUEUED, "now": now, "id": task_id, "owner_id": owner_id},
    )
    task = get_task(db, owner_id=owner_id, task_id=task_id, with_steps=False)
    if moved == 1 or task.status == CANCELED:
        return task
    raise Conflict(
        f"task {task_id} is {task.status}; only a queued task can be cancelled",
        extra={"task_status": task.status},
    )
