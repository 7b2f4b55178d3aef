"""The usage ledger: what each user used, as entries that are only ever added.

The plan quotas count it (services/quotas.py) rather than the tasks a user still has, so
deleting an agent, a task or (later) a conversation lowers nobody's usage: no foreign key leads
from an entry to them, and nothing updates or deletes an entry (nor does the cleanup job).
Each entry is written in the transaction of the work it counts:

    record_submission    submit_task, beside the task row, under the user's lock: 1 task
    record_model_usage   task_runner, in the transaction that settles a run, whatever it
                         settles to (succeeded, failed, queued again, or fenced out): the
                         tokens its model calls spent and their cost (MODEL_PRICES)

Usage in a billing period is the sum over the entries created in it (`period_totals`). Periods
are worked out when read (services/billing.py) and change with the plan, so entries carry a
time, not a period. Plain SQL; task_runner passes `Db.of_session(session)`.

Locks: an insert locks only the user row (`FOR KEY SHARE`, its one foreign key's check), the
first in the one order (user → agent → task, services/task_claims.py): the writers above hold
it already, or (a run whose task is gone) hold nothing else. With no foreign key to agents or
tasks, the ledger adds no edge to that order.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from shared_layer.monitoring import cost_micros
from shared_layer.sql import Db

__all__ = [
    "PeriodTotals",
    "UsageEntryRecord",
    "period_totals",
    "record_model_usage",
    "record_submission",
]


@dataclass(frozen=True)
class UsageEntryRecord:
    """A `usage_ledger` row."""

    id: uuid.UUID
    user_id: uuid.UUID | None
    task_id: uuid.UUID
    agent_id: uuid.UUID
    kind: str
    tasks: int
    prompt_tokens: int
    completion_tokens: int
    cost_micros: int
    model: str | None
    created_at: datetime


@dataclass(frozen=True)
class PeriodTotals:
    tasks: int
    tokens: int


def _insert(db: Db, entry: UsageEntryRecord) -> None:
    """Insert `entry`; its user_id is kept only while the user exists (the ledger outlives a
    user removed meanwhile, as ON DELETE SET NULL would leave it)."""
    values = vars(entry)
    columns = ", ".join(values)
    placeholders = ", ".join(
        "(SELECT id FROM users WHERE id = :user_id)" if name == "user_id" else f":{name}"
        for name in values
    )
    db.execute(f"INSERT INTO usage_ledger ({columns}) VALUES ({placeholders})", values)  # noqa: S608 - names are ours


def record_submission(
    db: Db, *, user_id: uuid.UUID, agent_id: uuid.UUID, task_id: uuid.UUID, at: datetime
) -> None:
    """A task was submitted at `at` (the task's `created_at`)."""
    entry = UsageEntryRecord(
        id=uuid.uuid4(),
        user_id=user_id,
        task_id=task_id,
        agent_id=agent_id,
        kind="task",
        tasks=1,
        prompt_tokens=0,
        completion_tokens=0,
        cost_micros=0,
        model=None,
        created_at=at,
    )
    _insert(db, entry)


def record_model_usage(
    db: Db,
    *,
    user_id: uuid.UUID,
    agent_id: uuid.UUID,
    task_id: uuid.UUID,
    provider: str,
    model: str,
    prompt_tokens: int,
    completion_tokens: int,
) -> None:
    """A run's model calls spent these tokens (nothing is written when they spent none)."""
    if prompt_tokens + completion_tokens == 0:
        return
    cost = cost_micros(
        model=model,
        provider=provider,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
    )
    entry = UsageEntryRecord(
        id=uuid.uuid4(),
        user_id=user_id,
        task_id=task_id,
        agent_id=agent_id,
        kind="model",
        tasks=0,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        cost_micros=cost,
        model=model,
        created_at=datetime.now(UTC),
    )
    _insert(db, entry)


def period_totals(db: Db, *, user_id: uuid.UUID, start: datetime, end: datetime) -> PeriodTotals:
    """Tasks submitted and tokens spent by the user in [start, end)."""
    row = db.one(
        "SELECT coalesce(sum(tasks), 0) AS tasks,"
        " coalesce(sum(prompt_tokens + completion_tokens), 0) AS tokens"
        " FROM usage_ledger WHERE user_id = :user_id"
        " AND created_at >= :start AND created_at < :end",
        {"user_id": user_id, "start": start, "end": end},
    )
    assert row is not None, "an aggregate always has a row"
    return PeriodTotals(tasks=int(row["tasks"]), tokens=int(row["tokens"]))
