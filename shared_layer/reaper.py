"""Tasks nobody is working on: leases that lapsed, and queued tasks nobody was told about.

- A running task whose lease lapsed lost its runner (the instance died, the deadline passed).
  `settle_lapsed_lease` (services/task_claims.py, the same rule task_runner's claim applies)
  puts it back in the queue while attempts remain, else fails it with the reason. A requeued
  task is published again so a runner picks it up.
- A task still `queued` after `TASK_REPUBLISH_AFTER_SECONDS` was most likely never published
  (the agents function stores the task, commits, then publishes; a failed publish leaves it
  queued) or its messages ran out of deliveries. It is published again; its `updated_at` is
  moved on in the same conditional UPDATE, so two reapers never both take it, and it is not
  published again before another full interval passes.

Duplicate messages are harmless: task_runner's claim lets exactly one run proceed.

Locks: settling a lapsed lease takes the task's user and agent before the task, in the one
order every writer of tasks follows (services/task_claims.py). The republishing UPDATE, which
moves many queued tasks at once, takes only the tasks nobody holds (`SKIP LOCKED`): it never
waits for a task, so it cannot close a cycle with a DELETE of their agent holding some of
them; a task skipped is being changed by someone else, and the next run looks again.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select, update

from shared_layer.database import session_scope
from shared_layer.models import Task, TaskStatus
from shared_layer.services.task_claims import settle_lapsed_lease

logger = logging.getLogger(__name__)

BATCH = 200


@dataclass
class ReapResult:
    requeued: list[uuid.UUID] = field(default_factory=list)
    failed: list[uuid.UUID] = field(default_factory=list)


def reap_lapsed_leases(*, now: datetime, limit: int = 10 * BATCH) -> ReapResult:
    """Settle up to `limit` running tasks whose lease lapsed before `now`, `BATCH` per
    transaction."""
    result = ReapResult()
    seen: set[uuid.UUID] = set()
    while len(seen) < limit:
        lapsed = (
            select(Task.id, Task.attempts)
            .where(Task.status == TaskStatus.RUNNING.value, Task.lease_expires_at < now)
            .order_by(Task.lease_expires_at)
            .limit(BATCH)
        )
        if seen:  # one a concurrent claimer changed under us is not tried twice
            lapsed = lapsed.where(Task.id.not_in(seen))
        with session_scope() as session:
            rows = session.execute(lapsed).all()
            for task_id, attempts in rows:
                seen.add(task_id)
                state = settle_lapsed_lease(session, task_id=task_id, attempts=attempts, now=now)
                if state == "queued":
                    result.requeued.append(task_id)
                elif state == "failed":
                    result.failed.append(task_id)
        if len(rows) < BATCH:
            break
    for task_id in result.failed:
        logger.warning("task %s failed: its lease lapsed on the last attempt", task_id)
    return result


def claim_stale_queued(
    *, now: datetime, older_than: timedelta, limit: int = BATCH
) -> list[uuid.UUID]:
    """Queued tasks untouched since `now - older_than`, marked as handled now (see above)."""
    cutoff = now - older_than
    with session_scope() as session:
        stale = (
            select(Task.id)
            .where(Task.status == TaskStatus.QUEUED.value, Task.updated_at < cutoff)
            .order_by(Task.updated_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        statement = (
            update(Task)
            .where(Task.id.in_(stale), Task.status == TaskStatus.QUEUED.value)
            .where(Task.updated_at < cutoff)
            .values(updated_at=now)
            .returning(Task.id)
        )
        return list(session.execute(statement).scalars())


def republish(task_ids: Iterable[uuid.UUID]) -> int:
    """Publish each task again; the number published. A failure is logged: the task stays
    queued and a later run tries again."""
    from shared_layer.pubsub import publish_task

    published = 0
    for task_id in task_ids:
        try:
            publish_task(task_id)
        except Exception as exc:
            logger.warning(
                "could not republish task %s: %s",
                task_id,
                exc,
                extra={"task_id": str(task_id)},
            )
        else:
            published += 1
    return published
