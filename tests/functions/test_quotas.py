"""Plan limits, enforced where they bite: task submission (429 naming the limit and when it
resets; 403 for a model the plan lacks), agent creation (403), and task_runner before each
model call (the task fails with the reason and the model is not called)."""

from __future__ import annotations

import json
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared_layer.database import session_scope
from shared_layer.eventarc import binary_cloudevent
from shared_layer.models import Agent, Subscription, Task
from tests.conftest import function_app, table_counts


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
    with session_scope() as session:
        session.add(
            Task(
                agent_id=agent_id,
                owner_id=user_id,
                input="earlier",
                status="succeeded",
                prompt_tokens=tokens,
                created_at=datetime.now(UTC) - timedelta(days=days_ago),
            )
        )


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


def test_concurrent_submissions_cannot_slip_past_the_quota(db, settings_env, user_token):
    """The user's lock serialises the count and the insert: a row lock on PostgreSQL, the one
    write transaction on SQLite."""
    settings_env(BILLING_PLANS=plans(tasks_per_month=3))
    user_id, token = user_token()
    agent_id = new_agent(user_id)
    local = threading.local()

    def post(_: int) -> int:
        if not hasattr(local, "client"):
            local.client = function_app("agents").test_client()
        response = local.client.post(
            f"/agents/{agent_id}/tasks", json={"input": "hi"}, headers=bearer(token)
        )
        return int(response.status_code)

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = sorted(pool.map(post, range(8)))

    assert statuses == [202] * 3 + [429] * 5


# In task_runner, before each model call


def run(client: Any, task_id: uuid.UUID) -> Task:
    headers, body = binary_cloudevent(
        data=json.dumps({"task_id": str(task_id)}).encode(),
        attributes={"task_id": str(task_id)},
        message_id="7",
        project="demo",
        topic="stratus-tasks",
        subscription="projects/demo/subscriptions/stratus-tasks-task-runner",
    )
    assert client("task_runner").post("/", headers=headers, data=body).status_code == 200
    with session_scope() as session:
        task = session.get(Task, task_id)
        assert task is not None
        return task


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
