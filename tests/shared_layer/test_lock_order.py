"""Row locks are taken in one order, user → agent → task, so that PostgreSQL never finds a
cycle: deleting an agent (agent, then its tasks by cascade) races task_runner settling one of
its tasks and the agents function submitting one, many times over, with no deadlock, no 500
and a consistent end state."""

from __future__ import annotations

import json
import threading
import traceback
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import delete, func, select, update

from shared_layer.database import session_scope
from shared_layer.models import Agent, Task, TaskMetric, UsageEntry
from shared_layer.reaper import claim_stale_queued
from shared_layer.services.task_execution import run_task
from tests.conftest import function_app

ROUNDS = 60  # before the fix, 1 round in 10 deadlocked: 60 rounds miss it about once in 600
TASKS_PER_AGENT = 5


def status_of(method: str, path: str, token: str, **kwargs: Any) -> int:
    """The status the agents function answers (a test client of its own: one per thread)."""
    client = function_app("agents").test_client()
    response = client.open(path, method=method, headers={"Authorization": token}, **kwargs)
    return int(response.status_code)


def race(*actions: Callable[[], Any]) -> list[Any]:
    """Run the actions at once (a barrier releases them together); their results, or the
    formatted exception an action raised."""
    barrier = threading.Barrier(len(actions))
    results: list[Any] = [None] * len(actions)

    def start(index: int, action: Callable[[], Any]) -> None:
        barrier.wait()
        try:
            results[index] = action()
        except Exception:
            results[index] = traceback.format_exc()

    threads = [threading.Thread(target=start, args=item) for item in enumerate(actions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def agent_with_queued_tasks(
    user_id: uuid.UUID, **columns: Any
) -> tuple[uuid.UUID, list[uuid.UUID]]:
    with session_scope() as session:
        agent = Agent(owner_id=user_id, name=f"agent-{uuid.uuid4().hex[:8]}", **columns)
        session.add(agent)
        session.flush()
        tasks = [
            Task(agent_id=agent.id, owner_id=user_id, input="hi") for _ in range(TASKS_PER_AGENT)
        ]
        session.add_all(tasks)
        session.flush()
        return agent.id, [task.id for task in tasks]


def tokens_spent(user_id: uuid.UUID) -> tuple[int, int]:
    """The user's tokens in the usage ledger, and in the task metrics of their runs."""
    with session_scope() as session:
        ledger = select(func.sum(UsageEntry.prompt_tokens + UsageEntry.completion_tokens))
        metrics = select(func.sum(TaskMetric.prompt_tokens + TaskMetric.completion_tokens))
        return (
            session.scalar(ledger.where(UsageEntry.user_id == user_id)) or 0,
            session.scalar(metrics.where(TaskMetric.user_id == user_id)) or 0,
        )


def tasks_of(agent_id: uuid.UUID) -> int:
    with session_scope() as session:
        return session.scalar(select(func.count()).where(Task.agent_id == agent_id)) or 0


@pytest.mark.parametrize("failing", ["at the claim", "after a model call"])
def test_deleting_an_agent_while_task_runner_fails_its_tasks_never_deadlocks(
    pg, user_token, settings_env, failing
):
    """At the claim, the tasks fail in the claim's own transaction (a row stored before the
    rule that refuses a blank system prompt): the claim's UPDATE, then the failure's UPDATE,
    whose foreign-key check locked the agent the DELETE held while it waited for the task.
    After a model call, the failure also writes the tokens the call spent to the usage ledger
    (an enhanced agent planned, then the quota stopped it), which must close no cycle either,
    and counts them whether the task is still there or not."""
    if failing == "after a model call":
        settings_env(BILLING_PLANS=json.dumps({"free": {"tokens_per_month": 5}}))
    columns = {"system_prompt": ""} if failing == "at the claim" else {"system": "enhanced"}
    for _ in range(ROUNDS):
        user_id, token = user_token()
        agent_id, task_ids = agent_with_queued_tasks(user_id, **columns)

        def delete(agent_id: uuid.UUID = agent_id, token: str = token) -> int:
            return status_of("DELETE", f"/agents/{agent_id}", token)

        runs = [lambda task_id=task_id: run_task(task_id) for task_id in task_ids]
        deleted, *outcomes = race(delete, *runs)

        assert deleted == 204, deleted
        for outcome in outcomes:
            assert outcome in {"failed", "stale", "skipped", "missing"}, outcome
        assert tasks_of(agent_id) == 0
        ledger, metrics = tokens_spent(user_id)
        assert ledger == metrics  # what each run spent, as its task metric saw it
        claimed = {"failed", "stale"} & set(outcomes)  # the first to ask the quota calls
        assert (ledger > 0) == (failing == "after a model call" and bool(claimed))


def test_deleting_an_agent_while_tasks_are_submitted_to_it_is_a_404_never_a_500(pg, user_token):
    """A submission locks the agent it reads (after the user, before inserting the task): a
    DELETE that came first makes it a 404 rather than a foreign-key violation at the INSERT."""
    for _ in range(ROUNDS):
        user_id, token = user_token()
        agent_id, _ = agent_with_queued_tasks(user_id)

        def delete(agent_id: uuid.UUID = agent_id, token: str = token) -> int:
            return status_of("DELETE", f"/agents/{agent_id}", token)

        def submit(agent_id: uuid.UUID = agent_id, token: str = token) -> int:
            return status_of("POST", f"/agents/{agent_id}/tasks", token, json={"input": "hi"})

        deleted, *submitted = race(delete, *[submit] * TASKS_PER_AGENT)

        assert deleted == 204, deleted
        assert set(submitted) <= {202, 404}, submitted
        assert tasks_of(agent_id) == 0


def test_the_stale_queue_reaper_skips_a_task_another_transaction_holds(pg, queued_task):
    """The reaper's one UPDATE over many queued tasks would otherwise wait for a task a DELETE
    holds while holding one the DELETE waits for: it takes only the tasks nobody holds."""
    held, free = queued_task(), queued_task()
    long_ago = datetime.now(UTC) - timedelta(hours=1)
    with session_scope() as session:
        session.execute(update(Task).values(updated_at=long_ago))
    holder = pg.connect()
    holder.begin()
    holder.execute(delete(Task).where(Task.id == held.task_id))  # a cascade, mid-way
    pool = ThreadPoolExecutor(max_workers=1)
    reaping = pool.submit(
        claim_stale_queued, now=datetime.now(UTC), older_than=timedelta(minutes=15)
    )
    try:
        done, _ = wait([reaping], timeout=10)
    finally:
        holder.rollback()  # lets a reaper that waited finish
        holder.close()
        pool.shutdown()
    assert done, "the reaper waited for the held task"
    assert reaping.result() == [free.task_id]
