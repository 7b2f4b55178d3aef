"""The agents function: agent CRUD, tasks (submit, get, list, cancel), and every bad request."""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import jwt
import pytest
from flask.testing import FlaskClient
from sqlalchemy import text, update

from shared_layer.database import session_scope
from shared_layer.errors import Conflict
from shared_layer.models import Agent, Task, TaskStep
from shared_layer.pubsub import LocalPushPublisher, get_publisher, set_local_push_target
from shared_layer.sql import UniqueViolation, transaction
from tests.conftest import function_app, table_counts
from tests.support.cold_imports import (
    ORM,
    Step,
    first_request_imports,
    migrated_sqlite,
    serve_in_turn,
)
from tests.support.fake_pubsub import FakePubSub
from tests.support.problems import assert_problem


@pytest.fixture
def api(client: Callable[[str], FlaskClient]) -> FlaskClient:
    return client("agents")


@pytest.fixture
def pushed() -> Iterator[list[tuple[dict[str, str], bytes]]]:
    """Records the CloudEvents the local publisher pushes (acknowledging each one)."""
    received: list[tuple[dict[str, str], bytes]] = []

    def target(headers: dict[str, str], body: bytes) -> int:
        received.append((headers, body))
        return 204

    set_local_push_target(target)
    yield received
    set_local_push_target(None)


def auth(token: str) -> dict[str, str]:
    return {"Authorization": token}


def create_agent(api: FlaskClient, token: str, **fields: Any) -> dict[str, Any]:
    response = api.post("/agents", json={"name": "helper", **fields}, headers=auth(token))
    assert response.status_code == 201, response.get_data(as_text=True)
    return dict(response.json)


def submit(api: FlaskClient, token: str, agent_id: str, text_: str = "hello") -> dict[str, Any]:
    response = api.post(f"/agents/{agent_id}/tasks", json={"input": text_}, headers=auth(token))
    assert response.status_code == 202, response.get_data(as_text=True)
    return dict(response.json)


def stored_task(task_id: str) -> Task:
    with session_scope() as session:
        task = session.get(Task, uuid.UUID(task_id))
        assert task is not None
        return task


def set_task_status(task_id: str, status: str) -> None:
    with session_scope() as session:
        session.execute(update(Task).where(Task.id == uuid.UUID(task_id)).values(status=status))


# Agents


def test_agent_crud_round_trip(db, api, user_token):
    _, token = user_token()
    created = create_agent(
        api, token, description="answers", model="gpt-4o-mini", temperature=0.2, max_tokens=300
    )
    assert created["name"] == "helper"
    assert created["model"] == "gpt-4o-mini"
    assert created["system"] is None
    assert created["timeout_seconds"] is None
    agent_url = f"/agents/{created['id']}"

    got = api.get(agent_url, headers=auth(token))
    assert got.status_code == 200
    assert got.json == created

    patched = api.patch(
        agent_url, json={"system": "enhanced", "temperature": 1}, headers=auth(token)
    )
    assert patched.status_code == 200, patched.json
    assert patched.json["system"] == "enhanced"
    assert patched.json["temperature"] == 1.0
    assert patched.json["model"] == "gpt-4o-mini"  # fields not named are unchanged

    reset = api.patch(agent_url, json={"model": None, "name": "renamed"}, headers=auth(token))
    assert reset.status_code == 200
    assert reset.json["model"] is None
    assert reset.json["name"] == "renamed"
    assert reset.json["max_tokens"] == 300
    assert reset.json["system"] == "enhanced"

    listed = api.get("/agents", headers=auth(token))
    assert [a["id"] for a in listed.json["items"]] == [created["id"]]

    deleted = api.delete(agent_url, headers=auth(token))
    assert deleted.status_code == 204
    assert deleted.get_data() == b""
    assert_problem(api.get(agent_url, headers=auth(token)), 404, created["id"])
    assert table_counts(db)["agents"] == 0


def test_deleting_an_agent_deletes_its_tasks(db, api, user_token):
    _, token = user_token()
    agent = create_agent(api, token)
    submit(api, token, agent["id"])
    assert api.delete(f"/agents/{agent['id']}", headers=auth(token)).status_code == 204
    assert table_counts(db)["tasks"] == 0


def test_patch_cannot_null_the_name(db, api, user_token):
    _, token = user_token()
    agent = create_agent(api, token)
    before = table_counts(db)
    response = api.patch(f"/agents/{agent['id']}", json={"name": None}, headers=auth(token))
    assert_problem(response, 400, "name cannot be null")
    assert table_counts(db) == before


def test_duplicate_agent_name_conflicts_per_owner(db, api, user_token):
    _, ann = user_token()
    _, bob = user_token()
    create_agent(api, ann, name="twin")
    other = create_agent(api, ann, name="other")
    before = table_counts(db)

    assert_problem(api.post("/agents", json={"name": "twin"}, headers=auth(ann)), 409, "twin")
    renamed = api.patch(f"/agents/{other['id']}", json={"name": "twin"}, headers=auth(ann))
    assert_problem(renamed, 409, "twin")
    assert table_counts(db) == before
    create_agent(api, bob, name="twin")  # names are unique per owner only


def test_users_see_only_their_own_agents(db, api, user_token):
    _, ann = user_token()
    _, bob = user_token()
    agent = create_agent(api, ann)
    url = f"/agents/{agent['id']}"
    before = table_counts(db)

    assert_problem(api.get(url, headers=auth(bob)), 404, agent["id"])
    assert_problem(api.patch(url, json={"model": "x"}, headers=auth(bob)), 404)
    assert_problem(api.delete(url, headers=auth(bob)), 404)
    assert_problem(api.post(f"{url}/tasks", json={"input": "hi"}, headers=auth(bob)), 404)
    listed = api.get("/agents", headers=auth(bob))
    assert listed.json == {"items": [], "total": 0, "limit": 20, "offset": 0, "has_more": False}
    assert table_counts(db) == before
    assert api.get(url, headers=auth(ann)).json["model"] is None


def test_agent_list_is_paginated_newest_first_with_metadata(db, api, user_token):
    _, token = user_token()
    ids = [create_agent(api, token, name=f"a{i}")["id"] for i in range(5)]

    first = api.get("/agents?limit=2", headers=auth(token)).json
    assert first["total"] == 5
    assert first["limit"] == 2
    assert first["offset"] == 0
    assert first["has_more"] is True
    assert [a["id"] for a in first["items"]] == ids[::-1][:2]
    last = api.get("/agents?limit=2&offset=4", headers=auth(token)).json
    assert [a["id"] for a in last["items"]] == [ids[0]]
    assert last["has_more"] is False
    beyond = api.get("/agents?offset=10", headers=auth(token)).json
    assert beyond["items"] == []
    assert beyond["total"] == 5


def test_concurrent_creates_of_one_name_make_exactly_one_agent(db, api, user_token, settings_env):
    settings_env(DATABASE_POOL_SIZE="12")
    _, token = user_token()
    barrier = threading.Barrier(8)
    statuses: list[int] = []

    def create() -> None:
        own_client = function_app("agents").test_client()
        barrier.wait()
        response = own_client.post("/agents", json={"name": "race"}, headers=auth(token))
        statuses.append(response.status_code)

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert sorted(statuses) == [201] + [409] * 7
    assert table_counts(db)["agents"] == 1


def _sessions_waiting_on_locks(engine: Any) -> int:
    # A fresh transaction per look: pg_stat_activity is a snapshot per transaction.
    with engine.connect() as conn:
        return int(
            conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND datname = current_database()"
                )
            ).scalar_one()
        )


def test_a_create_that_loses_the_race_at_insert_is_a_conflict_not_an_error(pg, user_token):
    """Both pass the name check; the loser's INSERT waits on the winner's, then is a Conflict."""
    from shared_layer.services.agents import create_agent as create

    owner, _ = user_token()
    outcome: list[BaseException] = []

    def loser() -> None:
        try:
            with transaction() as sql:
                create(sql, owner_id=owner, name="race")
        except BaseException as exc:
            outcome.append(exc)

    with transaction() as sql:
        create(sql, owner_id=owner, name="race")  # inserted, not committed
        thread = threading.Thread(target=loser)
        thread.start()
        deadline = time.monotonic() + 10
        while not _sessions_waiting_on_locks(pg):  # the loser blocks on our uncommitted row
            assert time.monotonic() < deadline, "the second insert never waited"
            time.sleep(0.02)
    thread.join(10)

    assert len(outcome) == 1
    assert isinstance(outcome[0], Conflict)
    assert "race" in outcome[0].detail
    assert isinstance(outcome[0].__cause__, UniqueViolation)  # it lost at the INSERT itself
    assert table_counts(pg)["agents"] == 1


# Tasks


def test_submit_answers_202_stores_a_queued_task_and_publishes_one_message(
    db, api, user_token, pushed
):
    owner, token = user_token()
    agent = create_agent(api, token)

    response = api.post(
        f"/agents/{agent['id']}/tasks", json={"input": "summarise this"}, headers=auth(token)
    )

    assert response.status_code == 202, response.json
    body = response.json
    task_id = body["id"]
    assert body["status"] == "queued"
    assert body["agent_id"] == agent["id"]
    assert body["links"]["self"] == f"/tasks/{task_id}" == response.headers["Location"]
    assert body["links"]["cancel"] == f"/tasks/{task_id}/cancel"
    task = stored_task(task_id)
    assert (task.status, task.input, task.owner_id) == ("queued", "summarise this", owner)
    assert len(pushed) == 1
    headers, raw = pushed[0]
    assert headers["ce-type"] == "google.cloud.pubsub.topic.v1.messagePublished"
    message = json.loads(raw)["message"]
    assert headers["ce-id"] == message["messageId"]
    assert message["attributes"] == {"task_id": task_id}
    assert json.loads(base64.b64decode(message["data"])) == {"task_id": task_id}


def test_submit_in_gcp_mode_publishes_the_task_to_pubsub(db, api, user_token, settings_env):
    with FakePubSub() as fake:
        settings_env(PUBSUB_MODE="gcp", GOOGLE_CLOUD_PROJECT="proj", PUBSUB_EMULATOR_HOST=fake.host)
        _, token = user_token()
        agent = create_agent(api, token)
        task_id = submit(api, token, agent["id"])["id"]
    [message] = fake.messages
    assert message.topic == "projects/proj/topics/stratus-tasks"
    assert message.attributes == {"task_id": task_id}
    assert json.loads(message.data) == {"task_id": task_id}


@pytest.mark.parametrize("failure", ["error-answer", "server-down"])
def test_submit_still_answers_202_when_publishing_fails(
    db, api, user_token, settings_env, caplog, failure
):
    fake = FakePubSub(fail_with=grpc.StatusCode.PERMISSION_DENIED).start()
    try:
        settings_env(PUBSUB_MODE="gcp", GOOGLE_CLOUD_PROJECT="proj", PUBSUB_EMULATOR_HOST=fake.host)
        if failure == "server-down":
            get_publisher().timeout = 1.0  # type: ignore[attr-defined]
            fake.stop()
        _, token = user_token()
        agent = create_agent(api, token)

        response = api.post(
            f"/agents/{agent['id']}/tasks", json={"input": "x"}, headers=auth(token)
        )
    finally:
        fake.stop()

    assert response.status_code == 202, response.json
    assert response.json["status"] == "queued"
    assert stored_task(response.json["id"]).status == "queued"
    assert fake.messages == []
    logged = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert any(
        response.json["id"] in r.getMessage() and "not published" in r.getMessage() for r in logged
    )


def test_users_see_only_their_own_tasks(db, api, user_token):
    _, ann = user_token()
    _, bob = user_token()
    task_id = submit(api, ann, create_agent(api, ann)["id"])["id"]
    before = table_counts(db)

    assert_problem(api.get(f"/tasks/{task_id}", headers=auth(bob)), 404, task_id)
    assert_problem(api.post(f"/tasks/{task_id}/cancel", headers=auth(bob)), 404, task_id)
    assert api.get("/tasks", headers=auth(bob)).json["total"] == 0
    assert table_counts(db) == before
    assert stored_task(task_id).status == "queued"


def test_get_task_shows_usage_and_the_steps_in_order(db, api, user_token):
    _, token = user_token()
    task_id = submit(api, token, create_agent(api, token)["id"])["id"]
    with session_scope() as session:
        task = session.get(Task, uuid.UUID(task_id))
        assert task is not None
        task.status, task.result, task.prompt_tokens, task.completion_tokens = (
            "succeeded",
            "ok",
            7,
            5,
        )
        for position, kind in ((1, "tool_call"), (0, "model_call")):
            session.add(
                TaskStep(task_id=task.id, position=position, kind=kind, content={"n": position})
            )

    got = api.get(f"/tasks/{task_id}", headers=auth(token)).json

    assert got["status"] == "succeeded"
    assert got["result"] == "ok"
    assert got["usage"] == {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}
    assert [(s["position"], s["kind"], s["content"]) for s in got["steps"]] == [
        (0, "model_call", {"n": 0}),
        (1, "tool_call", {"n": 1}),
    ]


def test_task_list_filters_by_status_and_agent_newest_first(db, api, user_token):
    _, token = user_token()
    first = create_agent(api, token, name="first")["id"]
    second = create_agent(api, token, name="second")["id"]
    ids = [submit(api, token, agent)["id"] for agent in (first, first, second)]
    set_task_status(ids[0], "succeeded")

    everything = api.get("/tasks", headers=auth(token)).json
    assert [t["id"] for t in everything["items"]] == ids[::-1]
    assert everything["total"] == 3
    assert everything["items"][0]["steps"] is None  # steps only on GET /tasks/{id}
    queued = api.get("/tasks?status=queued", headers=auth(token)).json
    assert {t["id"] for t in queued["items"]} == {ids[1], ids[2]}
    by_agent = api.get(f"/tasks?agent_id={first}&status=queued", headers=auth(token)).json
    assert [t["id"] for t in by_agent["items"]] == [ids[1]]
    page = api.get("/tasks?limit=1&offset=1", headers=auth(token)).json
    assert page["items"][0]["id"] == ids[1]
    assert page["total"] == 3
    assert page["has_more"] is True


def test_cancel_moves_a_queued_task_to_canceled_and_repeating_it_is_harmless(db, api, user_token):
    _, token = user_token()
    task_id = submit(api, token, create_agent(api, token)["id"])["id"]

    canceled = api.post(f"/tasks/{task_id}/cancel", headers=auth(token))
    assert canceled.status_code == 200, canceled.json
    assert canceled.json["status"] == "canceled"
    assert canceled.json["finished_at"]
    again = api.post(f"/tasks/{task_id}/cancel", headers=auth(token))
    assert again.status_code == 200
    assert again.json["finished_at"] == canceled.json["finished_at"]
    assert stored_task(task_id).status == "canceled"


@pytest.mark.parametrize("status", ["running", "succeeded", "failed"])
def test_cancel_of_a_running_or_finished_task_conflicts(db, api, user_token, status):
    _, token = user_token()
    task_id = submit(api, token, create_agent(api, token)["id"])["id"]
    set_task_status(task_id, status)

    assert_problem(api.post(f"/tasks/{task_id}/cancel", headers=auth(token)), 409, status)
    assert stored_task(task_id).status == status


# Bad input: each is a problem+json 4xx naming what was wrong, and the database is unchanged.

BODY_CASES = [
    # (route kind, raw body, content type, status, words in the problem)
    ("create", b"{bad json", "application/json", 400, ["not valid json"]),
    ("create", b"", "application/json", 400, ["empty"]),
    ("create", b"[]", "application/json", 400, ["body"]),
    ("create", b"{}", "application/json", 400, ["name", "missing"]),
    ("create", b'{"name": 5}', "application/json", 400, ["name"]),
    ("create", b'{"name": "a", "colour": "red"}', "application/json", 400, ["colour"]),
    ("create", b'{"name": "a", "temperature": "0.5"}', "application/json", 400, ["temperature"]),
    ("create", b'{"name": "a", "temperature": 2.5}', "application/json", 400, ["temperature"]),
    ("create", b'{"name": "a", "temperature": NaN}', "application/json", 400, ["not valid json"]),
    ("create", b'{"name": "a", "max_tokens": "10"}', "application/json", 400, ["max_tokens"]),
    ("create", b'{"name": "a", "max_tokens": 0}', "application/json", 400, ["max_tokens"]),
    ("create", b'{"name": "a", "timeout_seconds": 3601}', "application/json", 400, ["timeout"]),
    ("create", b'{"name": "a", "system": "turbo"}', "application/json", 400, ["system"]),
    ("create", b'{"name": "a", "model": "bad model!"}', "application/json", 400, ["model"]),
    ("create", b'{"name": ""}', "application/json", 400, ["name"]),
    ("create", b'{"name": "a\\u0000b"}', "application/json", 400, ["name"]),
    ("create", b'{"name": "a"}', "text/plain", 415, ["application/json"]),
    ("update", b"{bad", "application/json", 400, ["not valid json"]),
    ("update", b'{"temperature": -1}', "application/json", 400, ["temperature"]),
    ("update", b'{"owner_id": "x"}', "application/json", 400, ["owner_id"]),
    ("update", b'{"system_prompt": true}', "application/json", 400, ["system_prompt"]),
    ("update", b"{}", "application/x-www-form-urlencoded", 415, ["application/json"]),
    ("submit", b"{bad", "application/json", 400, ["not valid json"]),
    ("submit", b"{}", "application/json", 400, ["input", "missing"]),
    ("submit", b'{"input": 5}', "application/json", 400, ["input"]),
    ("submit", b'{"input": ""}', "application/json", 400, ["input"]),
    ("submit", b'{"input": "a\\u0000"}', "application/json", 400, ["input", "nul"]),
    ("submit", b'{"input": "x", "priority": 1}', "application/json", 400, ["priority"]),
    ("submit", b'{"input": "x"}', "", 415, ["application/json"]),
]


@pytest.fixture
def an_agent(db, api, user_token) -> tuple[str, str]:
    _, token = user_token()
    return token, create_agent(api, token)["id"]


def _send(api: FlaskClient, kind: str, agent_id: str, token: str, **kwargs: Any) -> Any:
    method, path = {
        "create": ("POST", "/agents"),
        "update": ("PATCH", f"/agents/{agent_id}"),
        "submit": ("POST", f"/agents/{agent_id}/tasks"),
    }[kind]
    return api.open(path, method=method, headers=auth(token), **kwargs)


@pytest.mark.parametrize(("kind", "raw", "content_type", "status", "words"), BODY_CASES)
def test_bad_bodies_are_problems_and_change_nothing(
    db, api, an_agent, kind, raw, content_type, status, words
):
    token, agent_id = an_agent
    before = table_counts(db)
    response = _send(api, kind, agent_id, token, data=raw, content_type=content_type or None)
    assert_problem(response, status, *words)
    assert table_counts(db) == before
    assert get_publisher().outbox == []  # type: ignore[attr-defined]


def test_task_input_over_the_configured_limit_is_refused(db, api, an_agent, settings_env):
    settings_env(TASK_MAX_INPUT_CHARS="10")
    token, agent_id = an_agent
    before = table_counts(db)
    response = _send(api, "submit", agent_id, token, json={"input": "x" * 11})
    assert_problem(response, 400, "input", "limit is 10")
    assert table_counts(db) == before


@pytest.mark.parametrize("kind", ["create", "update", "submit"])
def test_bodies_over_the_size_limit_are_413(db, api, an_agent, settings_env, kind):
    settings_env(MAX_BODY_BYTES="1024")
    token, agent_id = an_agent
    before = table_counts(db)
    response = _send(api, kind, agent_id, token, json={"name": "a", "description": "x" * 2000})
    assert_problem(response, 413, "1024")
    assert table_counts(db) == before


def _token(secret: str, **overrides: Any) -> str:
    now = datetime.now(UTC)
    claims = {
        "sub": str(uuid.uuid4()),
        "typ": "access",
        "iss": "stratus",
        "aud": "stratus-api",
        "iat": now,
        "exp": now + timedelta(minutes=5),
        "jti": "t",
        **overrides,
    }
    return "Bearer " + jwt.encode(claims, secret, algorithm="HS256")


SECRET = "test-secret-" + "x" * 40  # tests/conftest.py BASE_ENV's JWT_SECRET

BAD_TOKENS: dict[str, Callable[[str], str | None]] = {
    "missing": lambda good: None,
    "not-bearer": lambda good: "Basic dXNlcjpwdw==",
    "empty-bearer": lambda good: "Bearer ",
    "garbage": lambda good: "Bearer not.a.jwt",
    "expired": lambda good: _token(SECRET, exp=datetime.now(UTC) - timedelta(minutes=5)),
    "tampered": lambda good: good[:-3] + ("AAA" if not good.endswith("AAA") else "BBB"),
    "other-secret": lambda good: _token("another-secret-" + "y" * 40),
    "wrong-type": lambda good: _token(SECRET, typ="password_reset"),
    "wrong-audience": lambda good: _token(SECRET, aud="someone-else"),
}

ROUTES = [
    ("POST", "/agents", {"name": "n"}),
    ("GET", "/agents", None),
    ("GET", "/agents/{agent}", None),
    ("PATCH", "/agents/{agent}", {"model": "m"}),
    ("DELETE", "/agents/{agent}", None),
    ("POST", "/agents/{agent}/tasks", {"input": "hi"}),
    ("GET", "/tasks", None),
    ("GET", "/tasks/{task}", None),
    ("POST", "/tasks/{task}/cancel", None),
]


@pytest.mark.parametrize(("method", "template", "body"), ROUTES)
@pytest.mark.parametrize("bad", list(BAD_TOKENS))
def test_every_route_refuses_bad_tokens_with_401(db, api, an_agent, method, template, body, bad):
    token, agent_id = an_agent
    task_id = submit(api, token, agent_id)["id"]
    path = template.format(agent=agent_id, task=task_id)
    header = BAD_TOKENS[bad](token)
    before = table_counts(db)

    response = api.open(path, method=method, json=body, headers=auth(header) if header else {})

    problem = assert_problem(response, 401)
    assert "token" in problem["detail"].lower() or "authorization" in problem["detail"].lower()
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert table_counts(db) == before
    assert stored_task(task_id).status == "queued"


@pytest.mark.parametrize(
    "path",
    ["/agents/not-a-uuid", "/agents/123/tasks", "/tasks/not-a-uuid", "/tasks/xyz/cancel"],
)
def test_ids_that_are_not_uuids_are_404(db, api, an_agent, path):
    token, _ = an_agent
    method = "POST" if path.endswith(("tasks", "cancel")) else "GET"
    before = table_counts(db)
    response = api.open(path, method=method, json={"input": "x"}, headers=auth(token))
    assert_problem(response, 404, path.split("/")[2])
    assert table_counts(db) == before


@pytest.mark.parametrize(
    "path",
    [
        f"/agents/{uuid.uuid4()}",
        f"/agents/{uuid.uuid4()}/tasks",
        f"/tasks/{uuid.uuid4()}",
        f"/tasks/{uuid.uuid4()}/cancel",
    ],
)
def test_unknown_ids_are_404(db, api, an_agent, path):
    token, _ = an_agent
    method = "POST" if path.endswith(("tasks", "cancel")) else "GET"
    before = table_counts(db)
    response = api.open(path, method=method, json={"input": "x"}, headers=auth(token))
    assert_problem(response, 404, path.split("/")[2])
    assert table_counts(db) == before


def test_unknown_routes_are_404(db, api, an_agent):
    token, agent_id = an_agent
    for path in ("/", "/agent", f"/agents/{agent_id}/tools", "/tasks/a/b/c"):
        assert_problem(api.get(path, headers=auth(token)), 404, "no route")


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PUT", "/agents", "GET, HEAD, POST"),
        ("DELETE", "/agents", "GET, HEAD, POST"),
        ("PUT", "/agents/{agent}", "DELETE, GET, HEAD, PATCH"),
        ("GET", "/agents/{agent}/tasks", "POST"),
        ("POST", "/tasks", "GET, HEAD"),
        ("DELETE", "/tasks/{task}", "GET, HEAD"),
        ("GET", "/tasks/{task}/cancel", "POST"),
    ],
)
def test_wrong_methods_are_405_with_allow(db, api, an_agent, method, path, allow):
    token, agent_id = an_agent
    path = path.format(agent=agent_id, task=uuid.uuid4())
    before = table_counts(db)
    response = api.open(path, method=method, json={}, headers=auth(token))
    assert_problem(response, 405, method)
    assert response.headers["Allow"] == allow
    assert table_counts(db) == before


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/agents?limit=0", "limit"),
        ("/agents?limit=101", "limit"),
        ("/agents?limit=ten", "limit"),
        ("/agents?offset=-1", "offset"),
        ("/agents?page=2", "page"),
        ("/tasks?status=done", "status"),
        ("/tasks?agent_id=nope", "agent_id"),
        ("/tasks?limit=5&sort=asc", "sort"),
    ],
)
def test_bad_query_parameters_are_400_naming_the_parameter(db, api, an_agent, path, field):
    token, _ = an_agent
    problem = assert_problem(api.get(path, headers=auth(token)), 400, field)
    assert problem["errors"][0]["field"] == field


# What the document says is what the server checks (docs/openapi.yaml)


def test_names_and_texts_are_kept_as_typed_spaces_included(db, api, an_agent):
    token, _ = an_agent
    agent = create_agent(api, token, name=" spaced ", description="  two  ")
    task = submit(api, token, agent["id"], "  hello  ")

    assert (agent["name"], agent["description"]) == (" spaced ", "  two  ")
    assert stored_task(task["id"]).input == "  hello  "
    assert create_agent(api, token, name="spaced")["name"] == "spaced"  # another agent


@pytest.mark.parametrize(
    ("field", "value"),
    [("name", " " + "n" * 100), ("name", "n" * 100 + " "), ("description", "d" * 2000 + " ")],
)
def test_a_limit_counts_the_string_as_typed(db, api, an_agent, field, value):
    """Trimmed before the check, a 101-character name with a space passed maxLength 100."""
    token, _ = an_agent
    before = table_counts(db)

    response = api.post("/agents", json={"name": "n", field: value}, headers=auth(token))

    assert_problem(response, 400, fields={field})
    assert table_counts(db) == before


def test_integers_may_be_written_with_a_zero_fraction_as_json_schema_allows(db, api, an_agent):
    token, _ = an_agent
    agent = create_agent(api, token, name="whole", max_tokens=207.0, timeout_seconds=3e1)

    assert (agent["max_tokens"], agent["timeout_seconds"]) == (207, 30)
    assert api.get("/agents?limit=1.0&offset=0e0", headers=auth(token)).json["limit"] == 1


@pytest.mark.parametrize(
    "value", [207.5, "207", True, 1e400, [207]], ids=["fraction", "string", "bool", "inf", "list"]
)
def test_integers_refuse_fractions_strings_and_booleans(db, api, an_agent, value):
    token, _ = an_agent
    before = table_counts(db)
    body = json.dumps({"name": "n", "max_tokens": value}).replace("Infinity", "1e400")

    response = api.post("/agents", data=body, content_type="application/json", headers=auth(token))

    assert_problem(response, 400, fields={"max_tokens"})
    assert table_counts(db) == before


@pytest.mark.parametrize("value", ["true", "1_0", "05", "1.5", "", "0x10", "1e400"])
def test_an_integer_query_parameter_is_a_json_number_with_no_fraction(db, api, an_agent, value):
    token, _ = an_agent

    response = api.get(f"/agents?limit={value}", headers=auth(token))

    assert_problem(response, 400, fields={"limit"})


def test_publisher_in_these_tests_is_the_local_sync_one():
    """The matrix above checks `outbox` stays empty; that presumes this configuration."""
    publisher = get_publisher()
    assert isinstance(publisher, LocalPushPublisher)
    assert publisher.mode == "sync"


def test_agent_rows_are_only_written_through_the_owner(db, api, user_token):
    """PATCH cannot move an agent to another owner or change its id."""
    owner, token = user_token()
    agent = create_agent(api, token)
    response = api.patch(
        f"/agents/{agent['id']}", json={"id": str(uuid.uuid4())}, headers=auth(token)
    )
    assert_problem(response, 400, "id")
    with session_scope() as session:
        stored = session.get(Agent, uuid.UUID(agent["id"]))
        assert stored is not None
        assert stored.owner_id == owner


# -- cold start -----------------------------------------------------------------------------


def test_listing_agents_on_a_cold_instance_imports_no_llm_pubsub_stripe_alembic_or_email_check(
    tmp_path, settings_env, user_token
):
    """A cold start and a first authenticated request load what serving it needs: not the
    publisher (only a submission publishes), the model client, Stripe, Alembic, nor the email
    validator (agents has no email field; the account bodies that do are built on first use)."""
    url = migrated_sqlite(tmp_path)
    settings_env(DATABASE_URL=url)
    _, token = user_token()

    cold = first_request_imports(
        "agents",
        path="/agents",
        headers={"Authorization": token},
        env={"DATABASE_URL": url},
        cwd=tmp_path,
    )

    assert cold.status == 200, cold.body
    assert json.loads(cold.body)["total"] == 0
    heavy = (
        "openai",
        "shared_layer.pubsub",
        "google.cloud.pubsub",
        "grpc",
        "tenacity",
        "stripe",
        "alembic",
        "email_validator",
    )
    assert cold.loaded(heavy) == []


def test_agents_serves_agents_and_tasks_without_importing_sqlalchemy(
    tmp_path, settings_env, user_token
):
    """Create, list and get an agent, submit a task, get it and list tasks on a cold instance:
    all through plain SQL, so SQLAlchemy (and the models built on it) is never imported."""
    url = migrated_sqlite(tmp_path)
    settings_env(DATABASE_URL=url)
    _, token = user_token()
    auth = {"Authorization": token}
    served = serve_in_turn(
        "agents",
        [
            Step("POST", "/agents", {"name": "cold", "temperature": 0.5}, auth, {"agent": "id"}),
            Step("GET", "/agents", headers=auth),
            Step("GET", "/agents/{agent}", headers=auth),
            Step("POST", "/agents/{agent}/tasks", {"input": "hello"}, auth, {"task": "id"}),
            Step("GET", "/tasks/{task}", headers=auth),
            Step("GET", "/tasks", headers=auth),
        ],
        env={"DATABASE_URL": url},
        cwd=tmp_path,
    )

    statuses = [status for status, _ in served.answers]
    assert statuses == [201, 200, 200, 202, 200, 200], served.answers
    answers = [answer for _, answer in served.answers]
    assert answers[1]["total"] == 1
    assert answers[2]["temperature"] == 0.5
    assert (answers[4]["status"], answers[4]["steps"]) == ("queued", [])
    assert [t["id"] for t in answers[5]["items"]] == [answers[3]["id"]]
    assert served.flushed == 6
    assert served.loaded(ORM) == []
