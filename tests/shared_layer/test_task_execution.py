"""Task execution: the claim and its fencing token, and run_task's outcomes on both backends."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from shared_layer.agent_config import DEFAULT_SYSTEM_PROMPTS
from shared_layer.agent_systems import PLAN_INSTRUCTION, StepRecord
from shared_layer.database import session_scope
from shared_layer.errors import UpstreamError
from shared_layer.models import Task, TaskStep
from shared_layer.services.task_claims import claim_task, complete_task, fail_task, release_task
from shared_layer.services.task_execution import run_task

STEP = StepRecord(kind="llm_call", content={"answer": "hi"}, prompt_tokens=3, completion_tokens=2)


def load(task_id) -> tuple[Task, list[TaskStep]]:
    with session_scope() as session:
        task = session.get(Task, task_id)
        steps = session.scalars(
            select(TaskStep).where(TaskStep.task_id == task_id).order_by(TaskStep.position)
        ).all()
        return task, list(steps)


def set_columns(task_id, **values) -> None:
    with session_scope() as session:
        session.execute(update(Task).where(Task.id == task_id).values(**values))


def claim(task_id, lease_seconds: int = 60) -> int | None:
    with session_scope() as session:
        return claim_task(session, task_id=task_id, lease_seconds=lease_seconds)


# The claim and the fencing token


def test_a_claim_wins_once_and_returns_the_attempt_number(db, queued_task):
    task_id = queued_task().task_id
    before = datetime.now(UTC)
    assert claim(task_id, lease_seconds=90) == 1
    assert claim(task_id) is None
    task, _ = load(task_id)
    assert (task.status, task.attempts) == ("running", 1)
    assert task.started_at >= before
    assert task.lease_expires_at == task.started_at + timedelta(seconds=90)


@pytest.mark.parametrize("status", ["succeeded", "failed", "canceled"])
def test_a_finished_or_canceled_task_cannot_be_claimed(db, queued_task, status):
    task_id = queued_task().task_id
    set_columns(task_id, status=status)
    assert claim(task_id) is None
    assert load(task_id)[0].attempts == 0


def test_a_lapsed_lease_is_claimed_again_and_fences_out_the_old_runner(db, queued_task):
    task_id = queued_task().task_id
    assert claim(task_id) == 1
    set_columns(task_id, lease_expires_at=datetime.now(UTC) - timedelta(seconds=1))
    assert claim(task_id) == 2
    with session_scope() as session:
        common = {"result": "old", "provider": "offline", "model": "m", "steps": [STEP]}
        assert complete_task(session, task_id=task_id, attempt=1, **common) is False
        assert fail_task(session, task_id=task_id, attempt=1, reason="old") is False
        assert release_task(session, task_id=task_id, attempt=1, reason="old") == "stale"
    task, steps = load(task_id)
    assert (task.status, task.result, task.error, steps) == ("running", None, None, [])
    with session_scope() as session:
        assert complete_task(
            session,
            task_id=task_id,
            attempt=2,
            result="new",
            provider="openai",
            model="m",
            steps=[STEP, STEP],
        )
    task, steps = load(task_id)
    assert (task.status, task.result, task.prompt_tokens, task.completion_tokens) == (
        "succeeded",
        "new",
        6,
        4,
    )
    assert [s.position for s in steps] == [1, 2]
    assert task.lease_expires_at is None
    assert task.finished_at >= task.started_at


def test_release_requeues_until_the_attempts_run_out(db, queued_task, settings_env):
    settings_env(TASK_MAX_ATTEMPTS="2")
    task_id = queued_task().task_id
    assert claim(task_id) == 1
    with session_scope() as session:
        assert release_task(session, task_id=task_id, attempt=1, reason="HTTP 500") == "queued"
    task, _ = load(task_id)
    assert (task.status, task.lease_expires_at) == ("queued", None)
    assert "HTTP 500" in task.error
    assert claim(task_id) == 2
    with session_scope() as session:
        assert release_task(session, task_id=task_id, attempt=2, reason="HTTP 503") == "failed"
    task, _ = load(task_id)
    assert task.status == "failed"
    assert task.error == "gave up after 2 attempts; last error: HTTP 503"


def test_concurrent_claims_on_postgresql_have_exactly_one_winner(pg, queued_task):
    task_id = queued_task().task_id
    barrier = threading.Barrier(8)
    results: list[int | None] = []

    def contend() -> None:
        barrier.wait()
        results.append(claim(task_id))

    threads = [threading.Thread(target=contend) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results, key=str) == [1] + [None] * 7
    assert load(task_id)[0].attempts == 1


# run_task


def test_a_simple_agent_runs_offline_to_succeeded_with_result_usage_and_a_step(db, queued_task):
    task_id = queued_task("What is 2+2?").task_id
    assert run_task(task_id) == "succeeded"
    task, [step] = load(task_id)
    assert task.status == "succeeded"
    assert task.result.startswith("[offline]")
    assert "What is 2+2?" in task.result
    assert (task.provider, task.model, task.attempts, task.error) == (
        "offline",
        "gpt-4o-mini",
        1,
        None,
    )
    assert task.prompt_tokens == step.prompt_tokens > 0
    assert task.completion_tokens == step.completion_tokens > 0
    assert task.started_at <= task.finished_at
    assert (step.kind, step.position) == ("llm_call", 1)
    assert step.content["purpose"] == "answer"
    assert step.content["answer"] == task.result
    assert [m["role"] for m in step.content["messages"]] == ["system", "user"]
    assert step.duration_ms >= 0


def test_a_simple_agent_sends_its_configuration_to_the_model(db, queued_task, fake_openai):
    created = queued_task(
        "Hi", model="agent-model", temperature=0.0, max_tokens=77, timeout_seconds=7
    )
    assert run_task(created.task_id) == "succeeded"
    [request] = fake_openai.chat_requests()
    assert request.body["messages"] == [
        {"role": "system", "content": DEFAULT_SYSTEM_PROMPTS["simple"]},
        {"role": "user", "content": "Hi"},
    ]
    assert (request.body["model"], request.body["temperature"]) == ("agent-model", 0.0)
    assert request.body["max_tokens"] == 77
    assert request.body["user"] == str(created.owner_id)
    task, [step] = load(created.task_id)
    assert (task.result, task.provider, task.model) == ("echo: Hi", "openai", "agent-model")
    assert (task.prompt_tokens, task.completion_tokens) == (step.prompt_tokens, 2)


def test_an_agents_timeout_bounds_its_model_call(db, queued_task, fake_openai):
    created = queued_task("Hi", timeout_seconds=1)
    fake_openai.delay_seconds = 1.5  # longer than the agent's timeout, shorter than the default
    with pytest.raises(UpstreamError, match="timed out"):
        run_task(created.task_id)
    assert load(created.task_id)[0].status == "queued"


def test_an_enhanced_agent_plans_then_answers_with_its_recent_tasks_as_memory(
    db, queued_task, fake_openai, settings_env
):
    settings_env(AGENT_MEMORY_MESSAGES="2")
    first = queued_task("one", system="enhanced", system_prompt="Be kind.")
    for text in ("one", "two", "three", "four"):
        created = first if text == "one" else queued_task(text, agent=first)
        assert run_task(created.task_id) == "succeeded"
        time.sleep(0.01)  # distinct finished_at
    plan, answer = fake_openai.chat_requests()[-2:]
    memory = [  # the last two tasks, oldest first; "one" is forgotten
        {"role": "user", "content": "two"},
        {"role": "assistant", "content": "echo: two"},
        {"role": "user", "content": "three"},
        {"role": "assistant", "content": "echo: three"},
    ]
    assert plan.body["messages"] == [
        {"role": "system", "content": f"Be kind.\n\n{PLAN_INSTRUCTION}"},
        *memory,
        {"role": "user", "content": "four"},
    ]
    assert answer.body["messages"] == [
        {"role": "system", "content": "Be kind.\n\nYour plan:\necho: four"},
        *memory,
        {"role": "user", "content": "four"},
    ]
    task, steps = load(created.task_id)
    assert [s.content["purpose"] for s in steps] == ["plan", "answer"]
    assert task.prompt_tokens == sum(s.prompt_tokens for s in steps)
    assert task.completion_tokens == sum(s.completion_tokens for s in steps)
    assert task.result == "echo: four"


def test_a_simple_agent_has_no_memory_of_earlier_tasks(db, queued_task, fake_openai):
    first = queued_task("first")
    assert run_task(first.task_id) == "succeeded"
    assert run_task(queued_task("second", agent=first).task_id) == "succeeded"
    last = fake_openai.chat_requests()[-1].body["messages"]
    assert [m["role"] for m in last] == ["system", "user"]


@pytest.mark.parametrize("status", ["running", "succeeded", "failed", "canceled"])
def test_a_task_that_is_not_queued_is_skipped_without_a_model_call(
    db, queued_task, fake_openai, status
):
    task_id = queued_task().task_id
    set_columns(task_id, status=status, lease_expires_at=datetime.now(UTC) + timedelta(minutes=5))
    assert run_task(task_id) == "skipped"
    assert fake_openai.requests == []
    assert load(task_id)[0].status == status


def test_a_missing_task_is_reported_missing(db):
    assert run_task(uuid.uuid4()) == "missing"


def test_a_transient_model_error_requeues_the_task_and_raises(db, queued_task, fake_openai):
    task_id = queued_task().task_id
    fake_openai.fail_next(500)
    with pytest.raises(UpstreamError):
        run_task(task_id)
    task, steps = load(task_id)
    assert (task.status, task.attempts, steps) == ("queued", 1, [])
    assert "500" in task.error
    assert run_task(task_id) == "succeeded"
    task, _ = load(task_id)
    assert (task.status, task.attempts, task.error) == ("succeeded", 2, None)


def test_transient_errors_fail_the_task_once_attempts_run_out(
    db, queued_task, fake_openai, settings_env
):
    settings_env(TASK_MAX_ATTEMPTS="2")
    task_id = queued_task().task_id
    fake_openai.fail_next(429, times=2)
    with pytest.raises(UpstreamError):
        run_task(task_id)
    assert run_task(task_id) == "failed"
    task, _ = load(task_id)
    assert (task.status, task.attempts) == ("failed", 2)
    assert task.error.startswith("gave up after 2 attempts")
    assert run_task(task_id) == "skipped"
    assert len(fake_openai.requests) == 2


def test_a_rejected_model_request_fails_the_task_without_raising(db, queued_task, fake_openai):
    task_id = queued_task().task_id
    fake_openai.fail_next(400)
    assert run_task(task_id) == "failed"
    task, steps = load(task_id)
    assert (task.status, task.attempts, steps) == ("failed", 1, [])
    assert "HTTP 400" in task.error
    assert task.finished_at is not None


def test_an_agent_with_an_invalid_stored_configuration_fails_without_a_model_call(
    db, queued_task, fake_openai
):
    task_id = queued_task(system="clever").task_id
    assert run_task(task_id) == "failed"
    task, _ = load(task_id)
    assert task.status == "failed"
    assert "unknown agent system 'clever'" in task.error
    assert fake_openai.requests == []


def test_a_task_canceled_during_the_model_call_keeps_its_cancellation(db, queued_task, fake_openai):
    task_id = queued_task(timeout_seconds=7).task_id
    fake_openai.delay_seconds = 0.5
    seen: dict[str, timedelta] = {}

    def cancel_once_the_model_is_called() -> None:
        while not fake_openai.requests:
            time.sleep(0.01)
        task, _ = load(task_id)
        seen["lease"] = task.lease_expires_at - task.started_at
        set_columns(task_id, status="canceled", lease_expires_at=None)

    canceller = threading.Thread(target=cancel_once_the_model_is_called)
    canceller.start()
    assert run_task(task_id) == "stale"
    canceller.join()
    task, steps = load(task_id)
    assert (task.status, task.result, steps) == ("canceled", None, [])
    assert seen["lease"] == timedelta(seconds=7 * 1 * 1 + 30)  # timeout x calls x tries + margin
