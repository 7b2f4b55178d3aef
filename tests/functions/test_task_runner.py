"""task_runner through functions-framework: the CloudEvents Eventarc sends, in both modes."""

from __future__ import annotations

import base64
import json
import threading
import uuid

import pytest

from shared_layer.database import session_scope
from shared_layer.eventarc import PUBSUB_EVENT_TYPE, binary_cloudevent, structured_cloudevent
from shared_layer.models import Task, TaskStep
from tests.conftest import function_app, table_counts
from tests.support.cold_imports import first_request_imports, migrated_sqlite
from tests.support.problems import assert_problem

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def event_for(task_id: uuid.UUID, *, mode: str = "binary", message_id: str = "1001"):
    """The (headers, body) Eventarc would send for a task's Pub/Sub message."""
    build = binary_cloudevent if mode == "binary" else structured_cloudevent
    payload = json.dumps({"task_id": str(task_id)}).encode()
    return build(
        data=payload,
        attributes={"task_id": str(task_id)},
        message_id=message_id,
        project="demo",
        topic="stratus-tasks",
        subscription="projects/demo/subscriptions/stratus-tasks-task-runner",
    )


def deliver(client, task_id: uuid.UUID, **kwargs):
    headers, body = event_for(task_id, **kwargs)
    return client("task_runner").post("/", headers=headers, data=body)


def load(task_id: uuid.UUID) -> tuple[Task, list[TaskStep]]:
    with session_scope() as session:
        task = session.get(Task, task_id)
        steps = session.query(TaskStep).filter_by(task_id=task_id).order_by(TaskStep.position)
        return task, list(steps)


@pytest.fixture(params=["offline", "openai"])
def provider(request) -> str:
    if request.param == "openai":
        request.getfixturevalue("fake_openai")
    return str(request.param)


@pytest.mark.parametrize("mode", ["binary", "structured"])
def test_an_event_runs_its_queued_task_to_succeeded(db, client, queued_task, provider, mode):
    task_id = queued_task("Summarise the plan").task_id
    response = deliver(client, task_id, mode=mode)
    assert response.status_code == 200, response.get_data(as_text=True)
    task, [step] = load(task_id)
    assert (task.status, task.provider, task.attempts) == ("succeeded", provider, 1)
    expected = "echo: Summarise the plan" if provider == "openai" else "[offline]"
    assert task.result.startswith(expected)
    assert task.prompt_tokens > 0
    assert task.completion_tokens > 0
    assert task.started_at <= task.finished_at
    assert (step.kind, step.content["answer"]) == ("llm_call", task.result)


def test_a_redelivered_message_for_a_finished_task_makes_no_second_model_call(
    db, client, queued_task, fake_openai
):
    task_id = queued_task().task_id
    assert deliver(client, task_id).status_code == 200
    assert deliver(client, task_id).status_code == 200
    assert deliver(client, task_id, mode="structured").status_code == 200
    assert len(fake_openai.chat_requests()) == 1
    task, steps = load(task_id)
    assert (task.status, task.attempts, len(steps)) == ("succeeded", 1, 1)


def test_concurrent_deliveries_of_one_message_run_the_model_once(pg, queued_task, fake_openai):
    task_id = queued_task().task_id
    fake_openai.delay_seconds = 0.2  # the winner is still running while the others arrive
    headers, body = event_for(task_id)
    barrier = threading.Barrier(8)
    statuses: list[int] = []

    def push() -> None:
        test_client = function_app("task_runner").test_client()
        barrier.wait()
        statuses.append(test_client.post("/", headers=headers, data=body).status_code)

    threads = [threading.Thread(target=push) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [200] * 8
    assert len(fake_openai.chat_requests()) == 1
    task, steps = load(task_id)
    assert (task.status, task.attempts, len(steps)) == ("succeeded", 1, 1)


def test_a_transient_model_error_asks_for_redelivery_until_attempts_run_out(
    db, client, queued_task, fake_openai, settings_env
):
    settings_env(TASK_MAX_ATTEMPTS="2")
    task_id = queued_task().task_id
    fake_openai.fail_next(500, times=2)
    response = deliver(client, task_id)
    assert response.status_code == 500  # not acknowledged: Pub/Sub redelivers
    assert "Traceback" not in response.get_data(as_text=True)
    task, _ = load(task_id)
    assert (task.status, task.attempts) == ("queued", 1)
    assert deliver(client, task_id).status_code == 200  # the last attempt failed: acknowledged
    task, steps = load(task_id)
    assert (task.status, task.attempts, steps) == ("failed", 2, [])
    assert task.error.startswith("gave up after 2 attempts")
    assert "500" in task.error


def test_a_transient_error_then_a_redelivery_succeeds(db, client, queued_task, fake_openai):
    task_id = queued_task().task_id
    fake_openai.fail_next(503)
    assert deliver(client, task_id).status_code == 500
    assert deliver(client, task_id).status_code == 200
    task, _ = load(task_id)
    assert (task.status, task.attempts, task.result) == ("succeeded", 2, "echo: Say hello")


def test_a_rejected_model_request_fails_the_task_and_acknowledges(
    db, client, queued_task, fake_openai
):
    task_id = queued_task().task_id
    fake_openai.fail_next(400)
    assert deliver(client, task_id).status_code == 200
    task, _ = load(task_id)
    assert (task.status, task.attempts) == ("failed", 1)
    assert "HTTP 400" in task.error


def _pubsub_body(message: object) -> bytes:
    return json.dumps({"message": message, "subscription": "s"}).encode()


def _headers(event_type: str = PUBSUB_EVENT_TYPE) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "ce-specversion": "1.0",
        "ce-id": "evt-1",
        "ce-source": "//pubsub.googleapis.com/projects/demo/topics/stratus-tasks",
        "ce-type": event_type,
    }


NOT_TASKS = {
    "wrong type": (_headers("google.cloud.storage.object.v1.finalized"), b'{"bucket": "b"}'),
    "no message": (_headers(), b'{"subscription": "s"}'),
    "base64 garbage": (_headers(), _pubsub_body({"data": "%%%not-base64", "messageId": "7"})),
    "json without task_id": (
        _headers(),
        _pubsub_body({"data": base64.b64encode(b'{"job": 1}').decode(), "messageId": "8"}),
    ),
    "task_id not a uuid": (
        _headers(),
        _pubsub_body({"data": base64.b64encode(b'{"task_id": "x"}').decode(), "messageId": "9"}),
    ),
    "octet-stream data": ({**_headers(), "Content-Type": "application/octet-stream"}, b"\x00\xff"),
    "message data nested 100,000 deep": (
        _headers(),
        _pubsub_body({"data": base64.b64encode(b"[" * 100_000 + b"]" * 100_000).decode()}),
    ),
}


@pytest.mark.parametrize("case", list(NOT_TASKS))
def test_an_event_that_names_no_task_is_acknowledged_and_logged(db, client, json_logs, case):
    headers, body = NOT_TASKS[case]
    before = table_counts(db)
    response = client("task_runner").post("/", headers=headers, data=body)
    assert response.status_code == 200
    assert table_counts(db) == before
    [line] = [x for x in json_logs if x["message"].startswith("acknowledged event evt-1")]
    assert line["severity"] == "WARNING"
    assert line["logging.googleapis.com/labels"]["function"] == "task_runner"


@pytest.mark.parametrize(
    ("method", "headers", "body", "status"),
    [
        ("POST", {"Content-Type": "application/json"}, b'{"not": "a cloudevent"}', 400),
        ("POST", {"Content-Type": "text/plain"}, b"hello", 400),
        ("GET", {}, b"", 405),
    ],
)
def test_a_request_that_is_not_a_cloudevent_gets_a_problem_that_echoes_nothing(
    db, client, method, headers, body, status
):
    before = table_counts(db)
    secret = "Bearer do-not-echo-" + uuid.uuid4().hex
    response = client("task_runner").open(
        "/", method=method, headers={**headers, "Authorization": secret}, data=body
    )
    assert response.status_code == status
    assert response.mimetype == "application/problem+json"
    assert response.json["status"] == status
    assert secret not in response.get_data(as_text=True)
    if status == 405:
        assert response.headers["Allow"] == "POST"
    assert table_counts(db) == before


DEEP = b"[" * 100_000 + b"]" * 100_000


ENVELOPE = b'{"specversion": "1.0", "id": "evt-1", "source": "s", "type": "t", "data": '


def _envelope(data: bytes) -> bytes:
    return ENVELOPE + data + b"}"


@pytest.mark.parametrize(
    ("headers", "body", "words"),
    [
        (_headers(), DEEP, ["nested", "200 levels"]),
        (_headers(), b'{"message": ' + DEEP + b"}", ["nested", "200 levels"]),
        ({"Content-Type": "application/cloudevents+json"}, _envelope(DEEP), ["nested"]),
        ({"Content-Type": "application/cloudevents+json"}, DEEP, ["nested"]),
        ({"Content-Type": "application/cloudevents+json"}, _envelope(b"NaN"), ["not valid JSON"]),
        (_headers(), b'{"message": {"data": "", "x": Infinity}}', ["not valid JSON"]),
        (_headers(), b'{"message": ', ["not valid JSON"]),
        ({**_headers(), "Content-Type": "application/octet-stream"}, DEEP, ["nested"]),
        ({"Content-Type": "text/plain"}, DEEP, ["nested"]),
        ({"Content-Type": "text/plain"}, b"\xff", ["not valid JSON"]),
    ],
    ids=[
        *("binary-deep", "binary-deep-inside", "structured-deep-data", "structured-deep"),
        *("structured-nan", "binary-infinity", "binary-truncated", "binary-opaque-deep"),
        *("plain-deep", "plain-not-utf-8"),
    ],
)
def test_a_json_body_functions_framework_cannot_read_is_a_400_problem(
    db, client, json_logs, headers, body, words
):
    """Read before functions-framework's own parser (`json.loads`, whose recursion on a deep
    body ended in an HTML 500) by the parser every function uses."""
    before = table_counts(db)

    response = client("task_runner").post("/", headers=headers, data=body)

    assert_problem(response, 400, *words)
    assert table_counts(db) == before


def test_an_error_functions_framework_answers_itself_is_a_problem_that_says_nothing_of_it(
    db, client, queued_task, fake_openai, json_logs
):
    """Raising asks Pub/Sub for redelivery; the 500 is a problem, not the framework's text."""
    task_id = queued_task().task_id
    fake_openai.fail_next(503)

    response = deliver(client, task_id)

    problem = assert_problem(response, 500, never=["503", "UpstreamError", "retried"])
    assert problem["type"] == "https://stratus.dev/problems/internal"
    assert any(line["severity"] == "ERROR" and line.get("stack_trace") for line in json_logs)


def test_an_event_for_an_unknown_task_is_acknowledged_and_logged(db, client, json_logs):
    task_id = uuid.uuid4()
    before = table_counts(db)
    assert deliver(client, task_id).status_code == 200
    assert table_counts(db) == before
    assert any(
        x["message"] == "task does not exist; nothing to run" and x["task_id"] == str(task_id)
        for x in json_logs
    )


def test_log_lines_carry_the_events_trace_and_the_execution_id(db, client, queued_task, json_logs):
    task_id = queued_task().task_id
    headers, body = event_for(task_id)
    headers = {
        **headers,
        "ce-traceparent": f"00-{TRACE}-00f067aa0ba902b7-01",
        "Function-Execution-Id": "exec-42",
    }
    assert client("task_runner").post("/", headers=headers, data=body).status_code == 200
    [done] = [x for x in json_logs if x.get("outcome") == "succeeded"]
    assert done["logging.googleapis.com/trace"] == TRACE
    assert done["logging.googleapis.com/spanId"] == "00f067aa0ba902b7"
    labels = done["logging.googleapis.com/labels"]
    assert (labels["function"], labels["execution_id"]) == ("task_runner", "exec-42")
    assert done["task_id"] == str(task_id)
    assert done["message_id"] == "1001"


def test_a_task_submitted_through_the_api_is_run_by_the_local_push(
    db, client, user_token, push_to_task_runner
):
    _, token = user_token()
    auth = {"Authorization": token}
    agents = client("agents")
    created = agents.post("/agents", json={"name": "helper"}, headers=auth)
    assert created.status_code == 201, created.json
    submitted = agents.post(
        f"/agents/{created.json['id']}/tasks", json={"input": "What is Stratus?"}, headers=auth
    )
    assert submitted.status_code == 202, submitted.json
    assert push_to_task_runner == [200]
    shown = agents.get(f"/tasks/{submitted.json['id']}", headers=auth)
    assert shown.status_code == 200
    assert shown.json["status"] == "succeeded"
    assert shown.json["result"].startswith("[offline]")
    assert "What is Stratus?" in shown.json["result"]
    assert shown.json["usage"]["total_tokens"] > 0


@pytest.mark.parametrize("llm", ["offline", "openai"])
def test_a_cold_task_runner_imports_the_model_client_only_to_call_the_model(
    llm, tmp_path, settings_env, queued_task, request
):
    """Cold start: loading imports no model client nor the auth libraries; the first event
    imports Stratus's own client only when the run calls the model, and never the `openai` SDK
    (its import alone costs a cold start about half a second)."""
    url = migrated_sqlite(tmp_path)
    settings_env(DATABASE_URL=url)
    env = {"DATABASE_URL": url, "LLM_PROVIDER": llm}
    if llm == "openai":
        fake = request.getfixturevalue("fake_openai")
        env |= {"OPENAI_BASE_URL": fake.base_url, "OPENAI_API_KEY": "test-key"}
    task_id = queued_task("Say hello").task_id
    headers, body = event_for(task_id)

    cold = first_request_imports(
        "task_runner", method="POST", headers=headers, body=body.decode(), env=env, cwd=tmp_path
    )

    assert cold.status == 200, cold.body
    assert load(task_id)[0].status == "succeeded"
    never = (
        *("openai", "httpx", "aiohttp", "bcrypt", "jwt", "alembic", "stripe"),
        *("google.cloud.pubsub", "grpc", "email_validator"),
    )
    assert cold.loaded(("shared_layer.llm_http", *never), at_load=True) == []
    assert cold.loaded(never) == []
    assert bool(cold.loaded(["shared_layer.llm_http"])) == (llm == "openai")
    if llm == "openai":
        assert fake.chat_requests()  # the model was called through the client
