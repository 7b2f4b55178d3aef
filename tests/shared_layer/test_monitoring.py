"""Monitoring: one API-call metric per request (route template, batched inserts, never failing
the request), one task metric per claimed run (model, tokens, cost, queue wait), the seed's
decorators, and the log fields every request and task line carries."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import flask
import pytest
from sqlalchemy import Engine, event, select

from shared_layer.database import session_scope
from shared_layer.models import ApiCallMetric, TaskMetric
from shared_layer.monitoring import cost_micros, flush_metrics, monitor_api_call
from shared_layer.sql import Db


def _api_rows() -> list[ApiCallMetric]:
    flush_metrics()
    with session_scope() as session:
        return list(session.scalars(select(ApiCallMetric).order_by(ApiCallMetric.id)))


def _task_rows() -> list[TaskMetric]:
    with session_scope() as session:
        return list(session.scalars(select(TaskMetric).order_by(TaskMetric.id)))


class InsertCounter:
    """Counts INSERT statements sent to the database per table (executemany counts once):
    through SQLAlchemy's engines and through `shared_layer.sql` (the API-call metrics)."""

    def __init__(self) -> None:
        self.statements: list[str] = []

    def __call__(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        self.seen(statement)

    def seen(self, statement: str) -> None:
        if statement.lstrip().upper().startswith("INSERT"):
            self.statements.append(statement)

    def into(self, table: str) -> int:
        return sum(1 for s in self.statements if re.search(rf"INSERT INTO {table}\b", s))


@pytest.fixture
def inserts(db: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[InsertCounter]:
    """On every engine (a test that changes the settings gets a new one), and on every `Db`:
    each statement is noted, then run as it would have been."""
    counter = InsertCounter()
    run = Db._run

    def noting(self: Db, sql: str, params: Any) -> Any:
        counter.seen(sql)
        return run(self, sql, params)

    monkeypatch.setattr(Db, "_run", noting)
    event.listen(Engine, "before_cursor_execute", counter)
    yield counter
    event.remove(Engine, "before_cursor_execute", counter)


# -- API calls -----------------------------------------------------------------------------


def test_each_request_records_its_route_template_status_user_and_execution_id(
    db, client, user_token
):
    user_id, bearer = user_token()
    agents = client("agents")
    agent_id = agents.post("/agents", json={"name": "a"}, headers={"Authorization": bearer}).json[
        "id"
    ]
    r = agents.get(
        f"/agents/{agent_id}",
        headers={"Authorization": bearer, "Function-Execution-Id": "exec-123"},
    )
    assert r.status_code == 200
    rows = _api_rows()
    assert [(m.method, m.route, m.status_code) for m in rows] == [
        ("POST", "/agents", 201),
        ("GET", "/agents/{agent_id}", 200),
    ]
    got = rows[-1]
    assert got.function == "agents"
    assert got.user_id == user_id
    assert got.execution_id == "exec-123"
    assert got.duration_ms > 0
    assert agent_id not in got.route  # the template, never the raw path


def test_bad_and_unknown_requests_are_recorded_without_the_raw_path(db, client):
    agents = client("agents")
    assert agents.get("/agents").status_code == 401
    assert agents.get(f"/nope/{uuid.uuid4()}").status_code == 404
    assert agents.put("/agents").status_code == 405
    rows = [(m.method, m.route, m.status_code, m.user_id) for m in _api_rows()]
    assert rows == [
        ("GET", "/agents", 401, None),
        ("GET", "(unmatched)", 404, None),
        ("PUT", "(unmatched)", 405, None),
    ]


def test_a_request_adds_at_most_one_insert_and_batches_share_one(
    db, client, user_token, settings_env, inserts
):
    settings_env(MONITORING_BATCH_SIZE="3", MONITORING_FLUSH_SECONDS="60")
    _, bearer = user_token()
    agents = client("agents")
    per_request = []
    for _ in range(7):
        before = inserts.into("api_call_metrics")
        assert agents.get("/agents", headers={"Authorization": bearer}).status_code == 200
        per_request.append(inserts.into("api_call_metrics") - before)
    assert per_request == [0, 0, 1, 0, 0, 1, 0]  # one INSERT for each batch of three rows
    assert len(_api_rows()) == 7  # _api_rows flushes the seventh
    assert inserts.into("api_call_metrics") == 3


def test_with_batch_size_one_each_request_writes_its_row_at_once(db, client, inserts):
    client("health").get("/")
    assert inserts.into("api_call_metrics") == 1
    with session_scope() as session:
        assert session.scalar(select(ApiCallMetric.route)) == "/"


def test_waiting_rows_are_written_by_the_timer_when_no_request_comes(db, client, settings_env):
    settings_env(MONITORING_BATCH_SIZE="100", MONITORING_FLUSH_SECONDS="0.2")
    client("health").get("/")
    with session_scope() as session:
        assert session.scalar(select(ApiCallMetric.id)) is None  # still waiting
    deadline = time.monotonic() + 5
    found = None
    while found is None and time.monotonic() < deadline:
        time.sleep(0.05)
        with session_scope() as session:
            found = session.scalar(select(ApiCallMetric.route))
    assert found == "/"


def test_a_failure_to_record_is_logged_and_the_request_still_succeeds(
    client, settings_env, tmp_path, json_logs
):
    from shared_layer.database import get_engine
    from shared_layer.migrate import upgrade

    settings_env(DATABASE_URL=f"sqlite:///{tmp_path / 'no-metrics.db'}")
    engine = get_engine()
    upgrade(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE api_call_metrics")
    r = client("health").get("/")
    assert r.status_code == 200  # health is ok: the metric is not part of the answer
    failures = [e for e in json_logs if "could not record 1 API-call metric" in e["message"]]
    assert len(failures) == 1
    assert failures[0]["severity"] == "WARNING"
    assert failures[0]["logging.googleapis.com/labels"]["function"] == "health"


def test_monitoring_can_be_turned_off(db, client, settings_env, inserts):
    settings_env(MONITORING_ENABLED="false")
    assert client("health").get("/").status_code == 200
    assert inserts.into("api_call_metrics") == 0
    assert _api_rows() == []


def test_monitor_api_call_decorator_records_the_result_status_or_500_on_an_exception(db):
    @monitor_api_call("/export", "POST", function="reports")
    def export() -> flask.Response:
        return flask.Response(status=201)

    @monitor_api_call("/explode", "GET", function="reports")
    def explode() -> None:
        raise RuntimeError("boom")

    assert export().status_code == 201
    with pytest.raises(RuntimeError):
        explode()
    rows = [(m.function, m.method, m.route, m.status_code) for m in _api_rows()]
    assert rows == [("reports", "POST", "/export", 201), ("reports", "GET", "/explode", 500)]


# -- task runs -----------------------------------------------------------------------------


def test_a_task_run_records_model_tokens_cost_attempts_and_queue_wait(
    db, fake_openai, settings_env, queued_task
):
    from shared_layer.services.task_execution import run_task

    settings_env(MODEL_PRICES='{"gpt-4o-mini": [150000, 600000]}')
    task = queued_task("Say hello", model="gpt-4o-mini")
    assert run_task(task.task_id) == "succeeded"
    [row] = _task_rows()
    assert (row.task_id, row.agent_id, row.user_id) == (task.task_id, task.agent_id, task.owner_id)
    assert (row.status, row.provider, row.model, row.attempts) == (
        "succeeded",
        "openai",
        "gpt-4o-mini",
        1,
    )
    assert row.prompt_tokens > 0
    assert row.completion_tokens > 0
    expected = (row.prompt_tokens * 150_000 + row.completion_tokens * 600_000 + 500_000) // 10**6
    assert row.cost_micros == expected
    assert row.queue_wait_ms >= 0
    assert row.run_ms > 0


def test_a_run_retried_after_a_transient_error_is_recorded_as_retrying(
    db, fake_openai, queued_task
):
    from shared_layer.errors import UpstreamError
    from shared_layer.services.task_execution import run_task

    task = queued_task("Say hello")
    fake_openai.fail_next(503)
    with pytest.raises(UpstreamError):
        run_task(task.task_id)
    assert run_task(task.task_id) == "succeeded"
    assert [(r.status, r.attempts) for r in _task_rows()] == [("retrying", 1), ("succeeded", 2)]


def test_a_delivery_that_claims_nothing_records_no_task_metric(db, queued_task):
    from shared_layer.services.task_execution import run_task

    task = queued_task("Say hello")
    assert run_task(task.task_id) == "succeeded"
    assert run_task(task.task_id) == "skipped"  # a duplicate delivery
    assert run_task(uuid.uuid4()) == "missing"
    [row] = _task_rows()
    assert (row.status, row.provider, row.cost_micros) == ("succeeded", "offline", 0)


def test_cost_uses_the_exact_model_then_the_longest_prefix_and_nothing_offline(settings_env):
    settings_env(MODEL_PRICES='{"gpt-4o": [2500000, 10000000], "gpt-4o-mini": [150000, 600000]}')
    mini = cost_micros(
        model="gpt-4o-mini-2024-07-18", provider="openai", prompt_tokens=1000, completion_tokens=500
    )
    assert mini == 150 + 300
    big = cost_micros(model="gpt-4o", provider="openai", prompt_tokens=1000, completion_tokens=500)
    assert big == 2500 + 5000
    assert (
        cost_micros(model="gpt-4o", provider="offline", prompt_tokens=10, completion_tokens=10) == 0
    )
    assert (
        cost_micros(model="llama-3", provider="openai", prompt_tokens=10, completion_tokens=10) == 0
    )
    one = cost_micros(model="gpt-4o-mini", provider="openai", prompt_tokens=4, completion_tokens=0)
    assert one == 1  # 0.6 micros rounds half up: real tokens are never free


# -- log lines -----------------------------------------------------------------------------


def _labels(entry: dict[str, Any]) -> dict[str, str]:
    return entry["logging.googleapis.com/labels"]


def test_every_line_of_a_request_and_its_task_carries_trace_execution_id_and_function(
    db, client, user_token, push_to_task_runner, json_logs
):
    _, bearer = user_token()
    agents = client("agents")
    agent_id = agents.post("/agents", json={"name": "a"}, headers={"Authorization": bearer}).json[
        "id"
    ]
    json_logs.clear()
    r = agents.post(
        f"/agents/{agent_id}/tasks", json={"input": "Say hi"}, headers={"Authorization": bearer}
    )
    assert r.status_code == 202
    assert push_to_task_runner == [200]  # the task ran inside the request (sync push)
    assert json_logs
    for entry in json_logs:
        assert entry["logging.googleapis.com/trace"], entry
        assert _labels(entry)["execution_id"], entry
        assert _labels(entry)["function"] in ("agents", "task_runner"), entry
    functions = {_labels(e)["function"] for e in json_logs}
    assert functions == {"agents", "task_runner"}
    traces = {
        f: {e["logging.googleapis.com/trace"] for e in json_logs if _labels(e)["function"] == f}
        for f in functions
    }
    assert all(len(t) == 1 for t in traces.values())  # one trace per request / delivery
    assert any("task" in e["message"] and "succeeded" in e["message"] for e in json_logs)


def test_a_pushed_task_without_trace_headers_still_logs_one_trace_on_every_line(
    db, queued_task, json_logs
):
    from shared_layer.eventarc import binary_cloudevent, task_message
    from tests.conftest import function_app

    task = queued_task("Say hello")
    data, attributes = task_message(task.task_id)
    headers, body = binary_cloudevent(
        data=data, attributes=attributes, message_id="42", project="p", topic="t", subscription="s"
    )
    response = function_app("task_runner").test_client().post("/", headers=headers, data=body)
    assert response.status_code == 200
    lines = [e for e in json_logs if _labels(e).get("function") == "task_runner"]
    assert lines
    assert len({e["logging.googleapis.com/trace"] for e in lines}) == 1
    assert all(_labels(e)["execution_id"] for e in lines)
