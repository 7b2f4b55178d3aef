"""Plan limits, enforced where they bite: task submission (429 naming the limit and when it
resets; 403 for a model the plan lacks), agent creation (403), and task_runner before each
model call (the task fails with the reason and the model is not called)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import delete, select

from shared_layer.database import session_scope
from shared_layer.eventarc import binary_cloudevent
from shared_layer.models import Agent, Subscription, Task, TaskMetric
from shared_layer.services.billing import plan_in_effect
from shared_layer.services.quotas import usage_in_period
from shared_layer.services.task_execution import run_task
from shared_layer.sql import transaction
from tests.conftest import function_app, table_counts
from tests.support.fake_openai import chat_tokens
from tests.support.ledger import spend


def plans(**free: Any) -> str:
    return json.dumps({"free": free})


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": token}


def new_agent(user_id: uuid.UUID, **columns: Any) -> uuid.UUID:
    with session_scope() as session:
        agent = Agent(owner_id=user_id, name=f"agent-{uuid.uuid4().hex[:6]}", **columns)
        session.add(agent)
        session.flush()
        return agent.id


def used_task(
    user_id: uuid.UUID, agent_id: uuid.UUID, *, tokens: int = 0, days_ago: int = 0
) -> None:
    spend(user_id, agent_id, tokens=tokens, at=datetime.now(UTC) - timedelta(days=days_ago))


def submit(client: Any, token: str, agent_id: uuid.UUID) -> Any:
    return client("agents").post(
        f"/agents/{agent_id}/tasks", json={"input": "hi"}, headers=bearer(token)
    )


def next_month_start(now: datetime) -> datetime:
    first = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return (
        first.replace(year=first.year + 1, month=1)
        if first.month == 12
        else first.replace(month=first.month + 1)
    )


# At submission


def test_a_task_beyond_the_monthly_task_quota_is_a_429_naming_the_limit_and_its_reset(
    db, client, settings_env, user_token
):
    settings_env(BILLING_PLANS=plans(tasks_per_month=2))
    user_id, token = user_token()
    agent_id = new_agent(user_id)
    assert [submit(client, token, agent_id).status_code for _ in range(2)] == [202, 202]
    before = table_counts(db)

    refused = submit(client, token, agent_id)

    assert refused.status_code == 429
    assert refused.mimetype == "application/problem+json"
    body = refused.json
    assert body["type"] == "https://stratus.dev/problems/quota-exceeded"
    assert (body["limit"], body["plan"], body["used"], body["maximum"]) == (
        "tasks_per_month",
        "free",
        2,
        2,
    )
    resets = datetime.fromisoformat(body["resets_at"])
    assert resets == next_month_start(datetime.now(UTC))
    retry_after = int(refused.headers["Retry-After"])
    assert abs(retry_after - (resets - datetime.now(UTC)).total_seconds()) < 5
    assert table_counts(db) == before


def test_a_task_once_the_token_quota_is_used_is_a_429(db, client, settings_env, user_token):
    settings_env(BILLING_PLANS=plans(tokens_per_month=500))
    user_id, token = user_token()
    agent_id = new_agent(user_id)
    used_task(user_id, agent_id, tokens=499)
    assert submit(client, token, agent_id).status_code == 202
    used_task(user_id, agent_id, tokens=1)

    refused = submit(client, token, agent_id)

    assert refused.status_code == 429
    assert (refused.json["limit"], refused.json["used"]) == ("tokens_per_month", 500)


def test_usage_of_earlier_periods_does_not_count_and_a_paid_plan_lifts_the_limit(
    db, client, settings_env, user_token
):
    settings_env(BILLING_PLANS=plans(tasks_per_month=1))
    user_id, token = user_token()
    agent_id = new_agent(user_id)
    used_task(user_id, agent_id, days_ago=40)  # last month
    assert submit(client, token, agent_id).status_code == 202
    assert submit(client, token, agent_id).status_code == 429
    now = datetime.now(UTC)
    with session_scope() as session:
        session.add(
            Subscription(
                id="sub_pro",
                user_id=user_id,
                stripe_customer_id="cus_1",
                plan="pro",
                status="active",
                current_period_start=now - timedelta(hours=1),
                current_period_end=now + timedelta(days=30),
                version=1,
            )
        )

    assert submit(client, token, agent_id).status_code == 202


def test_an_agent_whose_model_the_plan_lacks_cannot_take_tasks(
    db, client, settings_env, user_token
):
    settings_env(BILLING_PLANS=plans(models=["gpt-4o-mini", "small-*"]))
    user_id, token = user_token()
    before_agents = [new_agent(user_id, model=m) for m in ("gpt-4o", "small-3b")] + [
        new_agent(user_id)
    ]
    before = table_counts(db)

    refused = submit(client, token, before_agents[0])

    assert refused.status_code == 403
    assert refused.json["type"] == "https://stratus.dev/problems/plan-limit"
    assert (refused.json["limit"], refused.json["model"]) == ("models", "gpt-4o")
    assert table_counts(db) == before
    assert submit(client, token, before_agents[1]).status_code == 202  # matches small-*
    assert submit(client, token, before_agents[2]).status_code == 202  # the default model


def test_an_agent_beyond_the_plans_number_of_agents_is_a_403(db, client, settings_env, user_token):
    settings_env(BILLING_PLANS=plans(agents=2))
    _, token = user_token()
    agents = client("agents")
    assert [
        agents.post("/agents", json={"name": f"a{i}"}, headers=bearer(token)).status_code
        for i in range(2)
    ] == [201, 201]
    before = table_counts(db)

    refused = agents.post("/agents", json={"name": "a3"}, headers=bearer(token))

    assert refused.status_code == 403
    assert (refused.json["limit"], refused.json["used"], refused.json["maximum"]) == (
        "agents",
        2,
        2,
    )
    assert table_counts(db) == before


def submit_concurrently(agent_id: Any, token: str, *, times: int) -> list[int]:
    """The statuses of `times` submissions to the agent made at once, from as many threads
    (each with its own test client), sorted."""
    local = threading.local()

    def post(_: int) -> int:
        if not hasattr(local, "client"):
            local.client = function_app("agents").test_client()
        response = local.client.post(
            f"/agents/{agent_id}/tasks", json={"input": "hi"}, headers=bearer(token)
        )
        return int(response.status_code)

    with ThreadPoolExecutor(max_workers=times) as pool:
        return sorted(pool.map(post, range(times)))


def test_concurrent_submissions_cannot_slip_past_the_quota(db, settings_env, user_token):
    """The user's lock serialises the count and the insert: a row lock on PostgreSQL, the one
    write transaction on SQLite."""
    settings_env(BILLING_PLANS=plans(tasks_per_month=3))
    user_id, token = user_token()
    agent_id = new_agent(user_id)
    statuses = submit_concurrently(agent_id, token, times=8)

    assert statuses == [202] * 3 + [429] * 5


# In task_runner, before each model call


def deliver(client: Any, task_id: uuid.UUID) -> int:
    """Deliver the task's message to task_runner as Eventarc would; the status it answers."""
    headers, body = binary_cloudevent(
        data=json.dumps({"task_id": str(task_id)}).encode(),
        attributes={"task_id": str(task_id)},
        message_id="7",
        project="demo",
        topic="stratus-tasks",
        subscription="projects/demo/subscriptions/stratus-tasks-task-runner",
    )
    return int(client("task_runner").post("/", headers=headers, data=body).status_code)


def stored(task_id: uuid.UUID) -> Task:
    with session_scope() as session:
        task = session.get(Task, task_id)
        assert task is not None
        return task


def run(client: Any, task_id: uuid.UUID) -> Task:
    assert deliver(client, task_id) == 200
    return stored(task_id)


def test_a_queued_task_whose_owner_ran_out_of_tokens_fails_without_calling_the_model(
    db, client, settings_env, queued_task, fake_openai
):
    queued = queued_task("Summarise")
    settings_env(BILLING_PLANS=plans(tokens_per_month=100))
    used_task(queued.owner_id, queued.agent_id, tokens=100)

    task = run(client, queued.task_id)

    assert task.status == "failed"
    assert "tokens" in task.error
    assert "resets at" in task.error
    assert fake_openai.chat_requests() == []


def test_an_enhanced_run_stops_before_the_call_that_the_quota_no_longer_allows(
    db, client, settings_env, queued_task, fake_openai
):
    queued = queued_task("Plan a trip", system="enhanced")
    settings_env(BILLING_PLANS=plans(tokens_per_month=5))  # the plan call alone uses more

    task = run(client, queued.task_id)

    assert task.status == "failed"
    assert "tokens_per_month" not in task.error  # the reason is in words
    assert "tokens per billing period" in task.error
    assert len(fake_openai.chat_requests()) == 1  # the plan was made, the answer was not asked


def test_a_task_whose_model_left_the_plan_after_submission_fails_without_a_model_call(
    db, client, settings_env, queued_task, fake_openai
):
    queued = queued_task("Hi", model="gpt-4o")
    settings_env(BILLING_PLANS=plans(models=["gpt-4o-mini"]))

    task = run(client, queued.task_id)

    assert task.status == "failed"
    assert "does not include the model 'gpt-4o'" in task.error
    assert fake_openai.chat_requests() == []


def test_within_the_quota_a_task_runs_as_before(db, client, settings_env, queued_task, fake_openai):
    queued = queued_task("Hi", system="enhanced")
    settings_env(BILLING_PLANS=plans(tokens_per_month=10_000))

    assert run(client, queued.task_id).status == "succeeded"
    assert len(fake_openai.chat_requests()) == 2


@pytest.mark.parametrize("system", ["simple", "enhanced"])
def test_the_default_free_plan_runs_the_existing_flows(db, client, queued_task, system):
    assert run(client, queued_task("Hi", system=system).task_id).status == "succeeded"


# Usage is counted from the ledger: deleting what it was spent on gives none of it back


def create_agent(client: Any, token: str) -> str:
    created = client("agents").post(
        "/agents", json={"name": f"agent-{uuid.uuid4().hex[:6]}"}, headers=bearer(token)
    )
    assert created.status_code == 201, created.json
    return str(created.json["id"])


def delete_agent(client: Any, token: str, agent_id: str) -> None:
    deleted = client("agents").delete(f"/agents/{agent_id}", headers=bearer(token))
    assert deleted.status_code == 204


def usage(client: Any, token: str) -> dict[str, int]:
    body = client("billing").get("/subscription", headers=bearer(token)).json
    return {name: body["usage"][name]["used"] for name in ("tasks", "tokens", "agents")}


def test_deleting_the_agent_at_the_task_limit_gives_no_task_back(
    db, client, settings_env, user_token
):
    settings_env(BILLING_PLANS=plans(tasks_per_month=2))
    _, token = user_token()
    agent_id = create_agent(client, token)
    assert [submit(client, token, agent_id).status_code for _ in range(2)] == [202, 202]
    delete_agent(client, token, agent_id)
    again = create_agent(client, token)
    before = table_counts(db)

    refused = submit(client, token, again)

    assert refused.status_code == 429
    assert (refused.json["limit"], refused.json["used"]) == ("tasks_per_month", 2)
    assert table_counts(db) == before


def test_deleting_the_agent_after_its_run_gives_no_token_back(
    db, client, settings_env, user_token, push_to_task_runner
):
    settings_env(BILLING_PLANS=plans(tokens_per_month=10))
    _, token = user_token()
    agent_id = create_agent(client, token)
    assert submit(client, token, agent_id).status_code == 202  # runs at once (local push)
    assert push_to_task_runner == [200]
    spent = usage(client, token)["tokens"]
    assert spent >= 10  # the offline model's answer alone is longer
    delete_agent(client, token, agent_id)

    refused = submit(client, token, create_agent(client, token))

    assert refused.status_code == 429
    assert (refused.json["limit"], refused.json["used"]) == ("tokens_per_month", spent)


def test_the_subscriptions_usage_is_unchanged_by_deleting_tasks_and_agents(
    db, client, user_token, push_to_task_runner
):
    _, token = user_token()
    kept, dropped = create_agent(client, token), create_agent(client, token)
    for agent_id in (kept, dropped, dropped):
        assert submit(client, token, agent_id).status_code == 202
    before = usage(client, token)
    assert (before["tasks"], before["agents"]) == (3, 2)
    assert before["tokens"] > 0

    delete_agent(client, token, dropped)
    with session_scope() as session:
        session.execute(delete(Task))  # however they go, tasks take no usage with them

    after = usage(client, token)
    assert after == {**before, "agents": 1}


def test_concurrent_submissions_at_the_limit_after_a_deletion_admit_exactly_the_rest(
    pg, client, settings_env, user_token
):
    settings_env(BILLING_PLANS=plans(tasks_per_month=4))
    _, token = user_token()
    first = create_agent(client, token)
    assert [submit(client, token, first).status_code for _ in range(2)] == [202, 202]
    delete_agent(client, token, first)
    agent_id = create_agent(client, token)
    statuses = submit_concurrently(agent_id, token, times=8)

    assert statuses == [202] * 2 + [429] * 6
    assert usage(client, token)["tasks"] == 4


def ledger_tokens(user_id: uuid.UUID) -> int:
    with transaction() as sql:
        status = plan_in_effect(sql, user_id=user_id)
        return usage_in_period(sql, user_id=user_id, status=status).tokens


PLAN_USAGE = {"prompt_tokens": 30, "completion_tokens": 12, "total_tokens": 42}
PLAN_ANSWER = {
    "id": "chatcmpl-plan",
    "object": "chat.completion",
    "created": 0,
    "model": "gpt-4o-mini",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "1. Pack."},
            "finish_reason": "stop",
        }
    ],
    "usage": PLAN_USAGE,
}


@pytest.mark.parametrize("failure", ["quota", "rejected", "unavailable"])
def test_the_tokens_of_a_run_that_fails_after_a_model_call_count(
    db, client, settings_env, queued_task, fake_openai, failure
):
    """An enhanced run plans, then stops before its answer (the quota stops it, the model
    refuses the request, or is unavailable and the task goes back to the queue): the plan's
    tokens were spent, and count; the run's task metric shows them too."""
    queued = queued_task("Plan a trip", system="enhanced")
    if failure == "quota":
        settings_env(BILLING_PLANS=plans(tokens_per_month=5))  # the plan call alone uses more
    else:
        fake_openai.answer_next(200, PLAN_ANSWER)
        fake_openai.fail_next(400 if failure == "rejected" else 503)

    status = deliver(client, queued.task_id)

    assert status == (500 if failure == "unavailable" else 200)  # 500: deliver it again
    assert stored(queued.task_id).status == ("queued" if failure == "unavailable" else "failed")
    [plan, *_] = fake_openai.chat_requests()
    expected = chat_tokens(plan.body["messages"]) if failure == "quota" else 42
    assert ledger_tokens(queued.owner_id) == expected > 0
    with session_scope() as session:
        [metric] = session.scalars(select(TaskMetric).where(TaskMetric.task_id == queued.task_id))
        assert metric.prompt_tokens + metric.completion_tokens == expected


def test_a_run_whose_agent_is_deleted_while_it_calls_the_model_still_counts_its_tokens(
    db, queued_task, fake_openai
):
    queued = queued_task("Hi")
    fake_openai.delay_seconds = 0.3

    def delete_during_the_call() -> None:
        while not fake_openai.chat_requests():
            time.sleep(0.01)
        with session_scope() as session:
            session.execute(delete(Agent).where(Agent.id == queued.agent_id))

    deleter = threading.Thread(target=delete_during_the_call)
    deleter.start()
    assert run_task(queued.task_id) == "stale"  # the task went with its agent
    deleter.join()

    [request] = fake_openai.chat_requests()
    assert ledger_tokens(queued.owner_id) == chat_tokens(request.body["messages"]) > 0
