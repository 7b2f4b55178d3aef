"""Tasks from the caller's side: submit, read, list and cancel.

Running a task belongs to `task_runner`; here a task is only stored `queued` (the adapter
commits, then publishes its id). Cancelling is a conditional UPDATE from `queued`, so it races
safely with a runner's claim: exactly one of them moves the task on.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import CursorResult, func, select, update
from sqlalchemy.orm import Session, selectinload

from shared_layer.config import get_settings
from shared_layer.errors import Conflict, InvalidInput, NotFound
from shared_layer.models import Task, TaskStatus
from shared_layer.services.accounts import get_active_user
from shared_layer.services.agents import get_agent
from shared_layer.services.quotas import enforce_task_submission

__all__ = ["cancel_task", "get_task", "list_tasks", "submit_task"]


def submit_task(session: Session, *, owner_id: uuid.UUID, agent_id: uuid.UUID, input: str) -> Task:
    """Store a queued task for one of the owner's agents; the caller publishes it after commit."""
    limit = get_settings().task_max_input_chars
    if not input or len(input) > limit:
        raise InvalidInput(f"input must be 1 to {limit} characters")
    get_active_user(session, user_id=owner_id)  # a disabled user's token runs nothing
    agent = get_agent(session, owner_id=owner_id, agent_id=agent_id)
    model = agent.model or get_settings().openai_model
    enforce_task_submission(session, user_id=owner_id, model=model)  # plan limits: 429 / 403
    task = Task(agent_id=agent.id, owner_id=owner_id, status=TaskStatus.QUEUED.value, input=input)
    session.add(task)
    session.flush()
    return task


def get_task(
    session: Session, *, owner_id: uuid.UUID, task_id: uuid.UUID, with_steps: bool = True
) -> Task:
    """The owner's task (with its steps loaded unless told otherwise); anyone else's is NotFound."""
    query = select(Task).where(Task.id == task_id, Task.owner_id == owner_id)
    if with_steps:
        query = query.options(selectinload(Task.steps))
    task = session.scalar(query)
    if task is None:
        raise NotFound(f"no task with id {task_id}")
    return task


def list_tasks(
    session: Session,
    *,
    owner_id: uuid.UUID,
    limit: int,
    offset: int,
    status: str | None = None,
    agent_id: uuid.UUID | None = None,
) -> tuple[list[Task], int]:
    """One page of the owner's tasks, newest first, and how many match in all."""
    conditions = [Task.owner_id == owner_id]
    if status is not None:
        conditions.append(Task.status == status)
    if agent_id is not None:
        conditions.append(Task.agent_id == agent_id)
    total = session.scalar(select(func.count()).select_from(Task).where(*conditions))
    items = session.scalars(
        select(Task)
        .where(*conditions)
        .order_by(Task.created_at.desc(), Task.id.desc())
        .limit(limit)
        .offset(offset)
    ).all()
    return list(items), int(total or 0)


def cancel_task(session: Session, *, owner_id: uuid.UUID, task_id: uuid.UUID) -> Task:
    """Cancel a queued task. Cancelling a cancelled task is a no-op (retries are safe);
    a task that is running or finished can no longer be cancelled: `Conflict`.
    """
    task = get_task(session, owner_id=owner_id, task_id=task_id, with_steps=False)
    now = datetime.now(UTC)
    result = session.execute(
        update(Task)
        .where(Task.id == task.id, Task.status == TaskStatus.QUEUED.value)
        .values(status=TaskStatus.CANCELED.value, finished_at=now, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    moved = cast("CursorResult[Any]", result).rowcount
    session.refresh(task)
    if moved == 1 or task.status == TaskStatus.CANCELED.value:
        return task
    raise Conflict(
        f"task {task_id} is {task.status}; only a queued task can be cancelled",
        extra={"task_status": task.status},
    )
