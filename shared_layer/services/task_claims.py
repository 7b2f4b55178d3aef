"""A task's state transitions: conditional, fenced UPDATEs that stay correct under
at-least-once, concurrent delivery.

`claim_task` is a conditional UPDATE that exactly one of any number of concurrent claimers
wins; it returns the new attempt number, which is the fencing token: every later write
(`complete_task`, `fail_task`, `release_task`) is guarded by `status = running AND attempts =
<token>`, so a runner whose lease lapsed and whose task was claimed again can never overwrite
the newer run.

    queued ──claim──> running ──> succeeded | failed
       ^                 │
       └──release────────┘  (a transient failure, while attempts < TASK_MAX_ATTEMPTS)

A running task whose lease has lapsed (its runner died) may be claimed again while attempts
remain; on its last attempt it fails instead (`settle_lapsed_lease`, which the lease reaper in
shared_layer/reaper.py uses too, so a claim and a reaper settle a lapsed lease alike).

Lock order. Every transaction that locks rows takes them in one order, user → agent → task
(→ the rows that point at the task), so PostgreSQL never meets a cycle: `lock_user` and the
agent's `FOR KEY SHARE` come before a task is inserted (services/tasks.py), a DELETE of an
agent locks the agent, then its tasks by cascade (services/agents.py), and every transition
here first locks the task's user, then its agent, `FOR KEY SHARE` (`_lock_parents`), before
its UPDATE. Without that, a second UPDATE of a task in one transaction (a claim, then its
failure) made PostgreSQL check the task's foreign keys, locking the agent *after* the task,
while a DELETE of the agent held the agent and waited for the task: a deadlock, and a 500.
`FOR KEY SHARE` is the lock those foreign-key checks take: it blocks only deleting the
parent, not changing its settings.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import ColumnElement, and_, or_, select, update
from sqlalchemy.orm import Session

from shared_layer.agent_systems import StepRecord, clip
from shared_layer.config import get_settings
from shared_layer.models import Agent, Task, TaskStatus, TaskStep, User, utcnow

MAX_ERROR_CHARS = 2000


def _lock_parents(session: Session, task_id: uuid.UUID) -> None:
    """Lock the task's user, then its agent, `FOR KEY SHARE` (a no-op on SQLite, which locks
    the whole database on write): what must come before the task's own row lock."""
    owner = (
        select(Task.agent_id)
        .join(User, User.id == Task.owner_id)
        .where(Task.id == task_id)
        .with_for_update(read=True, key_share=True, of=User)
    )
    agent_id = session.execute(owner).scalar_one_or_none()
    if agent_id is not None:  # else the task is gone (with its agent or user): nothing to lock
        agent = select(Agent.id).where(Agent.id == agent_id)
        session.execute(agent.with_for_update(read=True, key_share=True))


def _claimable(now: datetime) -> ColumnElement[bool]:
    """Queued, or running with a lapsed lease and an attempt left (else: settle_lapsed_lease)."""
    lapsed = and_(
        Task.status == TaskStatus.RUNNING.value,
        Task.lease_expires_at < now,
        Task.attempts < get_settings().task_max_attempts,
    )
    return or_(Task.status == TaskStatus.QUEUED.value, lapsed)


def settle_lapsed_lease(
    session: Session, *, task_id: uuid.UUID, attempts: int, now: datetime
) -> Literal["queued", "failed", "stale"]:
    """A running task whose lease lapsed (its runner stopped without reporting): back to queued
    while attempts remain, else failed with the reason. Guarded by the state that was read, so
    of several reapers and claimers exactly one settles it; "stale" when another did."""
    max_attempts = get_settings().task_max_attempts
    guard = and_(
        Task.id == task_id,
        Task.status == TaskStatus.RUNNING.value,
        Task.attempts == attempts,
        Task.lease_expires_at < now,
    )
    state: Literal["queued", "failed"]
    _lock_parents(session, task_id)
    if attempts >= max_attempts:
        state = "failed"
        values = {
            "status": TaskStatus.FAILED.value,
            "error": f"gave up after {attempts} attempts: the lease of the last one lapsed "
            "(the runner stopped without reporting)",
            "finished_at": now,
        }
    else:
        state = "queued"
        values = {
            "status": TaskStatus.QUEUED.value,
            "error": f"attempt {attempts} lapsed (the runner stopped without reporting); "
            "queued again",
        }
    statement = (
        update(Task)
        .where(guard)
        .values(**values, lease_expires_at=None, updated_at=now)
        .returning(Task.id)
    )
    return state if session.execute(statement).scalar_one_or_none() is not None else "stale"


def _held(task_id: uuid.UUID, attempt: int) -> ColumnElement[bool]:
    """The fencing guard: the task is still running under this claim."""
    return and_(
        Task.id == task_id, Task.status == TaskStatus.RUNNING.value, Task.attempts == attempt
    )


def _settle(
    session: Session, *, task_id: uuid.UUID, attempt: int, finished: bool, **values: Any
) -> bool:
    """Write `values` and drop the lease (stamping `finished_at` if `finished`) while the claim
    still holds; False (nothing written) if it is lost."""
    _lock_parents(session, task_id)
    now = utcnow()
    if finished:
        values["finished_at"] = now
    statement = (
        update(Task)
        .where(_held(task_id, attempt))
        .values(**values, lease_expires_at=None, updated_at=now)
        .returning(Task.id)
    )
    return session.execute(statement).scalar_one_or_none() is not None


def claim_task(session: Session, *, task_id: uuid.UUID, lease_seconds: int) -> int | None:
    """Claim a queued task (or one whose lease lapsed); the attempt number, or None if lost."""
    _lock_parents(session, task_id)
    now = utcnow()
    statement = (
        update(Task)
        .where(Task.id == task_id, _claimable(now))
        .values(
            status=TaskStatus.RUNNING.value,
            attempts=Task.attempts + 1,
            started_at=now,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            updated_at=now,
        )
        .returning(Task.attempts)
    )
    attempt: int | None = session.execute(statement).scalar_one_or_none()
    return attempt


def complete_task(
    session: Session,
    *,
    task_id: uuid.UUID,
    attempt: int,
    result: str,
    provider: str,
    model: str,
    steps: Sequence[StepRecord],
) -> bool:
    """Store a success with its steps and usage; False (nothing written) if the claim is lost."""
    settled = _settle(
        session,
        task_id=task_id,
        attempt=attempt,
        finished=True,
        status=TaskStatus.SUCCEEDED.value,
        result=result,
        error=None,
        provider=provider,
        model=model,
        prompt_tokens=sum(s.prompt_tokens for s in steps),
        completion_tokens=sum(s.completion_tokens for s in steps),
    )
    if not settled:
        return False
    session.add_all(
        TaskStep(
            task_id=task_id,
            position=position,
            kind=step.kind,
            content=step.content,
            prompt_tokens=step.prompt_tokens,
            completion_tokens=step.completion_tokens,
            duration_ms=step.duration_ms,
        )
        for position, step in enumerate(steps, start=1)
    )
    session.flush()
    return True


def fail_task(session: Session, *, task_id: uuid.UUID, attempt: int, reason: str) -> bool:
    """Mark the task failed with `reason`; False (nothing written) if the claim is lost."""
    return _settle(
        session,
        task_id=task_id,
        attempt=attempt,
        finished=True,
        status=TaskStatus.FAILED.value,
        error=clip(reason, MAX_ERROR_CHARS),
    )


def release_task(
    session: Session, *, task_id: uuid.UUID, attempt: int, reason: str
) -> Literal["queued", "failed", "stale"]:
    """After a transient failure: back to queued for another attempt, or failed when none is
    left; "stale" (nothing written) if the claim is lost."""
    max_attempts = get_settings().task_max_attempts
    if attempt >= max_attempts:
        final = f"gave up after {attempt} attempts; last error: {reason}"
        failed = fail_task(session, task_id=task_id, attempt=attempt, reason=final)
        return "failed" if failed else "stale"
    queued = _settle(
        session,
        task_id=task_id,
        attempt=attempt,
        finished=False,
        status=TaskStatus.QUEUED.value,
        error=clip(f"attempt {attempt} failed, will retry: {reason}", MAX_ERROR_CHARS),
    )
    return "queued" if queued else "stale"
