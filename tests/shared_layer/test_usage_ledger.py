"""The usage ledger on both backends: entries written in plain SQL read back through the model,
what a run spent and its cost, period bounds, and usage that outlives its user."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select

from shared_layer.database import session_scope
from shared_layer.maintenance import run_cleanup
from shared_layer.models import UsageEntry, User
from shared_layer.services.usage_ledger import (
    period_totals,
    record_model_usage,
    record_submission,
)
from shared_layer.sql import transaction


def new_user() -> uuid.UUID:
    with session_scope() as session:
        user = User(email=f"{uuid.uuid4().hex[:10]}@example.com", password_hash="x")
        session.add(user)
        session.flush()
        return user.id


def entries() -> list[UsageEntry]:
    with session_scope() as session:
        return list(session.scalars(select(UsageEntry).order_by(UsageEntry.kind.desc())))


def spend_tokens(
    user_id: uuid.UUID, *, provider: str, model: str, prompt: int, completion: int
) -> None:
    with transaction() as sql:
        record_model_usage(
            sql,
            user_id=user_id,
            agent_id=uuid.uuid4(),
            task_id=uuid.uuid4(),
            provider=provider,
            model=model,
            prompt_tokens=prompt,
            completion_tokens=completion,
        )


def test_a_submission_and_a_runs_spend_read_back_through_the_model_as_written(db):
    user_id, agent_id, task_id = new_user(), uuid.uuid4(), uuid.uuid4()
    at = datetime(2026, 3, 4, 5, 6, 7, 8, UTC)
    with transaction() as sql:
        record_submission(sql, user_id=user_id, agent_id=agent_id, task_id=task_id, at=at)
        record_model_usage(
            sql,
            user_id=user_id,
            agent_id=agent_id,
            task_id=task_id,
            provider="openai",
            model="gpt-4o-mini-2024-07-18",
            prompt_tokens=1000,
            completion_tokens=500,
        )

    task, model = entries()
    assert (task.kind, task.tasks, task.user_id, task.agent_id, task.task_id) == (
        "task",
        1,
        user_id,
        agent_id,
        task_id,
    )
    assert (task.prompt_tokens, task.completion_tokens, task.model, task.created_at) == (
        0,
        0,
        None,
        at,
    )
    assert (model.kind, model.tasks, model.prompt_tokens, model.completion_tokens) == (
        "model",
        0,
        1000,
        500,
    )
    # gpt-4o-mini's default price: 150,000 and 600,000 micros per million tokens
    assert (model.model, model.cost_micros) == ("gpt-4o-mini-2024-07-18", 150 + 300)


def test_offline_tokens_count_at_no_cost_and_a_run_that_spent_nothing_writes_nothing(db):
    user_id = new_user()
    spend_tokens(user_id, provider="offline", model="gpt-4o", prompt=7, completion=3)
    spend_tokens(user_id, provider="openai", model="gpt-4o", prompt=0, completion=0)

    [entry] = entries()
    assert (entry.prompt_tokens + entry.completion_tokens, entry.cost_micros) == (10, 0)


def test_a_period_counts_the_entries_from_its_start_up_to_not_including_its_end(db):
    user_id, other = new_user(), new_user()
    start = datetime(2026, 5, 1, tzinfo=UTC)
    end = datetime(2026, 6, 1, tzinfo=UTC)
    with transaction() as sql:
        for at in (start - timedelta(microseconds=1), start, end - timedelta(seconds=1), end):
            ids = {"agent_id": uuid.uuid4(), "task_id": uuid.uuid4()}
            record_submission(sql, user_id=user_id, at=at, **ids)
        record_submission(sql, user_id=other, agent_id=uuid.uuid4(), task_id=uuid.uuid4(), at=start)
    with transaction() as sql:
        totals = period_totals(sql, user_id=user_id, start=start, end=end)
    assert (totals.tasks, totals.tokens) == (2, 0)


def test_usage_outlives_its_user(db):
    """Deleting a user keeps their entries, unattributed (ON DELETE SET NULL); an entry written
    after the user is gone (a run settling late) is kept the same way, not refused."""
    user_id = new_user()
    spend_tokens(user_id, provider="openai", model="gpt-4o", prompt=5, completion=5)
    with session_scope() as session:
        session.execute(delete(User).where(User.id == user_id))
    spend_tokens(user_id, provider="openai", model="gpt-4o", prompt=1, completion=1)

    assert sorted((e.user_id, e.prompt_tokens) for e in entries()) == [(None, 1), (None, 5)]


def test_the_cleanup_job_leaves_entries_of_any_age_alone(db):
    user_id = new_user()
    long_ago = datetime.now(UTC) - timedelta(days=3650)
    with transaction() as sql:
        record_submission(
            sql, user_id=user_id, agent_id=uuid.uuid4(), task_id=uuid.uuid4(), at=long_ago
        )

    report = run_cleanup()

    assert report.status in {"done", "nothing_to_do"}
    assert [e.created_at for e in entries()] == [long_ago]
