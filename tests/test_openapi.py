"""docs/openapi.yaml is valid, lists exactly the routes the functions serve, matches the pydantic
bodies, and describes every response the real functions give (checked by tests/support/openapi)."""

from __future__ import annotations

import importlib.util
import json
import uuid
from datetime import UTC, datetime, timedelta
from functools import cache
from types import ModuleType
from typing import Any

import jwt
import pytest
from pydantic import BaseModel

from shared_layer.http import Router
from tests.conftest import BASE_ENV, FUNCTIONS, bearer_for, function_app, table_counts
from tests.support.openapi import (
    HTTP_METHODS,
    check_response,
    load_spec,
    schema_errors,
    validated_client,
)


@cache
def _module(name: str) -> ModuleType:
    """functions/<name>/main.py under a name of its own (every function's file is main.py)."""
    spec = importlib.util.spec_from_file_location(
        f"stratus_function_{name}", FUNCTIONS / name / "main.py"
    )
    assert spec
    assert spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _function_names() -> list[str]:
    return sorted(p.parent.name for p in FUNCTIONS.glob("*/main.py"))


def _router(name: str) -> Router | None:
    router = getattr(_module(name), "router", None)
    return router if isinstance(router, Router) else None


def _operations() -> list[tuple[str, str, dict[str, Any]]]:
    """(spec path, method, operation) for every documented HTTP operation."""
    return [
        (path, method, item[method])
        for path, item in load_spec()["paths"].items()
        for method in HTTP_METHODS
        if method in item
    ]


# (a) the document itself


def test_spec_is_valid_openapi_3_1():
    from openapi_spec_validator import validate

    spec = load_spec()
    assert spec["openapi"].startswith("3.1.")
    validate(spec)  # raises naming the first violation


def test_every_error_response_is_a_problem_document():
    for path, method, operation in _operations():
        for status, response in operation["responses"].items():
            if status == "default" or int(status) < 400:
                continue
            if path == "/health/" and status == "503":
                continue  # health's 503 is the health report itself, by design
            ref = response.get("$ref", "")
            content = (
                load_spec()["components"]["responses"][ref.rsplit("/", 1)[-1]]["content"]
                if ref
                else response["content"]
            )
            assert list(content) == ["application/problem+json"], (method, path, status)


def test_operation_ids_are_unique_and_authenticated_routes_declare_bearer_auth():
    ids = [op["operationId"] for _, _, op in _operations()]
    assert len(ids) == len(set(ids))
    for path, method, operation in _operations():
        function, template = _split(path)
        router = _router(function)
        assert router is not None
        route = router._routes[(method.upper(), template)]
        secured = operation.get("security") == [{"bearerAuth": []}]
        assert secured == route.auth, f"{method} {path}: security does not match the route"
        if route.auth:
            assert "401" in operation["responses"], f"{method} {path} documents no 401"


# (b) the document lists exactly what the functions serve


def _split(spec_path: str) -> tuple[str, str]:
    function, _, rest = spec_path.lstrip("/").partition("/")
    return function, "/" + rest


def test_every_served_route_is_documented_and_every_documented_route_is_served():
    served = {
        (name, method, template)
        for name in _function_names()
        if (router := _router(name)) is not None
        for method, template in router.routes
    }
    documented = {(*_split(path), method.upper()) for path, method, _ in _operations()}
    documented = {(fn, method, template) for fn, template, method in documented}
    assert served - documented == set(), "served but not in docs/openapi.yaml"
    assert documented - served == set(), "in docs/openapi.yaml but not served"
    assert {"auth", "agents", "health"} <= {fn for fn, _, _ in served}


def test_functions_without_http_routes_are_documented_as_webhooks():
    event_functions = {name for name in _function_names() if _router(name) is None}
    receivers = {
        op["x-function"]
        for item in load_spec().get("webhooks", {}).values()
        for method, op in item.items()
        if method in HTTP_METHODS
    }
    assert event_functions == receivers


# (c) the document matches the pydantic bodies

_REQUEST_MODELS = {
    "UserCreate": "shared_layer.schemas.accounts:UserCreate",
    "LoginRequest": "shared_layer.schemas.accounts:LoginRequest",
    "RefreshRequest": "shared_layer.schemas.accounts:RefreshRequest",
    "AgentCreate": "shared_layer.schemas.agents:AgentCreate",
    "AgentUpdate": "shared_layer.schemas.agents:AgentUpdate",
    "TaskCreate": "shared_layer.schemas.agents:TaskCreate",
    "CheckoutCreate": "shared_layer.schemas.billing:CheckoutCreate",
}
_RESPONSE_MODELS = {
    "TokenPair": "shared_layer.schemas.accounts:TokenPair",
    "UserPublic": "shared_layer.schemas.accounts:UserPublic",
    "AgentPublic": "shared_layer.schemas.agents:AgentPublic",
    "AgentPage": "shared_layer.schemas.agents:AgentPublic[page]",
    "TaskPublic": "shared_layer.schemas.agents:TaskPublic",
    "TaskPage": "shared_layer.schemas.agents:TaskPublic[page]",
    "TaskStepPublic": "shared_layer.schemas.agents:TaskStepPublic",
    "TaskAccepted": "shared_layer.schemas.agents:TaskAccepted",
    "TaskLinks": "shared_layer.schemas.agents:TaskLinks",
    "Usage": "shared_layer.schemas.agents:Usage",
    "HealthReport": "shared_layer.health:HealthReport",
    "HealthComponents": "shared_layer.health:HealthComponents",
    "DatabaseHealth": "shared_layer.health:DatabaseHealth",
    "MigrationsHealth": "shared_layer.health:MigrationsHealth",
    "ConfigHealth": "shared_layer.health:ConfigHealth",
    "LlmHealth": "shared_layer.health:LlmHealth",
    "PubSubHealth": "shared_layer.health:PubSubHealth",
    "PerformanceReport": "shared_layer.schemas.monitoring:PerformanceReport",
    "MetricsTotals": "shared_layer.schemas.monitoring:MetricsTotals",
    "RouteStats": "shared_layer.schemas.monitoring:RouteStats",
    "TaskStats": "shared_layer.schemas.monitoring:TaskStats",
    "SeriesPoint": "shared_layer.schemas.monitoring:SeriesPoint",
    "CleanupReport": "shared_layer.schemas.monitoring:CleanupReport",
    "CheckoutSessionPublic": "shared_layer.schemas.billing:CheckoutSessionPublic",
    "PortalSessionPublic": "shared_layer.schemas.billing:PortalSessionPublic",
    "SubscriptionPublic": "shared_layer.schemas.billing:SubscriptionPublic",
    "PlanUsage": "shared_layer.schemas.billing:PlanUsage",
    "LimitUsage": "shared_layer.schemas.billing:LimitUsage",
    "StripeWebhookReceipt": "shared_layer.schemas.billing:StripeWebhookReceipt",
    "SendGridWebhookReceipt": "shared_layer.schemas.billing:SendGridWebhookReceipt",
}


def _model(target: str) -> type[BaseModel]:
    from shared_layer.schemas.common import Page

    module, _, name = target.partition(":")
    page = name.endswith("[page]")
    model = getattr(importlib.import_module(module), name.removesuffix("[page]"))
    return Page[model] if page else model  # type: ignore[valid-type]


def _spec_nullable(schema: dict[str, Any]) -> bool:
    types = schema.get("type")
    if types == "null" or (isinstance(types, list) and "null" in types):
        return True
    return any(_spec_nullable(s) for s in schema.get("oneOf", []) + schema.get("anyOf", []))


def _pydantic_nullable(schema: dict[str, Any]) -> bool:
    return schema.get("type") == "null" or any(
        s.get("type") == "null" for s in schema.get("anyOf", [])
    )


@pytest.mark.parametrize("name", sorted(_REQUEST_MODELS))
def test_request_schema_has_the_fields_and_required_fields_of_its_model(name):
    spec = load_spec()["components"]["schemas"][name]
    model = _model(_REQUEST_MODELS[name]).model_json_schema(mode="validation")
    assert set(spec["properties"]) == set(model["properties"])
    assert set(spec.get("required", [])) == set(model.get("required", []))
    assert spec.get("additionalProperties") is False  # StrictBody: unknown fields are errors


@pytest.mark.parametrize("name", sorted(_RESPONSE_MODELS))
def test_response_schema_has_the_fields_and_nullability_of_its_model(name):
    spec = load_spec()["components"]["schemas"][name]
    model = _model(_RESPONSE_MODELS[name]).model_json_schema(mode="serialization")
    assert set(spec["properties"]) == set(model["properties"])
    # Every field is always serialized, so every field is required in the document.
    assert set(spec["required"]) == set(spec["properties"])
    for field, schema in model["properties"].items():
        assert _spec_nullable(spec["properties"][field]) == _pydantic_nullable(schema), field


def _string_fields(example: dict[str, Any]) -> list[str]:
    return [name for name, value in example.items() if isinstance(value, str)]


@pytest.mark.parametrize("name", sorted(_REQUEST_MODELS))
def test_documented_examples_are_valid_to_the_document_and_to_the_server(name):
    examples = load_spec()["components"]["schemas"][name]["examples"]
    model = _model(_REQUEST_MODELS[name])
    for example in examples:
        assert schema_errors(f"/components/schemas/{name}", example) == [], example
        model.model_validate(example)


@pytest.mark.parametrize("name", sorted(_REQUEST_MODELS))
def test_a_nul_in_any_string_field_is_refused_by_the_document_and_by_the_server(name):
    """Each string's `pattern` (JSON Schema's, read here by the validator the responses are
    checked with) refuses U+0000 exactly where the server does."""
    from pydantic import ValidationError

    model = _model(_REQUEST_MODELS[name])
    example = load_spec()["components"]["schemas"][name]["examples"][0]
    fields = _string_fields(example)
    assert fields
    for field in fields:
        bad = {**example, field: example[field][:3] + "\x00" + example[field][3:]}
        errors = schema_errors(f"/components/schemas/{name}", bad)
        assert [list(e.absolute_path) for e in errors] == [[field]], (field, errors)
        with pytest.raises(ValidationError) as refused:
            model.model_validate(bad)
        assert [e["loc"] for e in refused.value.errors()] == [(field,)]


def test_list_query_parameters_match_the_query_models():
    from shared_layer.schemas.agents import TaskListQuery
    from shared_layer.schemas.common import PageQuery

    def names(path: str) -> set[str]:
        params = load_spec()["paths"][path]["get"]["parameters"]
        refs = load_spec()["components"]["parameters"]
        return {
            refs[p["$ref"].rsplit("/", 1)[-1]]["name"] if "$ref" in p else p["name"] for p in params
        }

    assert names("/agents/agents") == set(PageQuery.model_fields)
    assert names("/agents/tasks") == set(TaskListQuery.model_fields)


# (d) the validator catches what it should


def test_validator_refuses_an_undocumented_status_a_wrong_type_and_a_bad_body():
    good = {"access_token": "a", "refresh_token": "r", "token_type": "bearer", "expires_in": 900}
    check_response("auth", "POST", "/login", 200, "application/json", json.dumps(good))
    with pytest.raises(AssertionError, match="status 418 is not documented"):
        check_response("auth", "POST", "/login", 418, "application/json", json.dumps(good))
    with pytest.raises(AssertionError, match="content type text/html is not documented"):
        check_response("auth", "POST", "/login", 200, "text/html", "<p>hi</p>")
    with pytest.raises(AssertionError, match="expires_in"):
        check_response(
            "auth",
            "POST",
            "/login",
            200,
            "application/json",
            json.dumps({**good, "expires_in": "x"}),
        )
    with pytest.raises(AssertionError, match="must be 404"):
        check_response("auth", "GET", "/nope", 200, "application/json", "{}")
    with pytest.raises(AssertionError, match="must be 405"):
        check_response("auth", "DELETE", "/me", 200, "application/json", "{}")
    with pytest.raises(AssertionError, match="Location is missing"):
        check_response(
            "agents",
            "POST",
            f"/agents/{uuid.uuid4()}/tasks",
            202,
            "application/json",
            json.dumps(
                {
                    "id": str(uuid.uuid4()),
                    "agent_id": str(uuid.uuid4()),
                    "status": "queued",
                    "links": {"self": "/t", "cancel": "/c", "agent": "/a"},
                }
            ),
            headers={},
        )


# (e) a scenario through the real functions, every response checked against the document


def _expired_token(user_id: uuid.UUID) -> str:
    past = datetime.now(UTC) - timedelta(hours=1)
    claims = {
        "sub": str(user_id),
        "typ": "access",
        "iss": "stratus",
        "aud": "stratus-api",
        "iat": past,
        "exp": past + timedelta(minutes=5),
        "jti": uuid.uuid4().hex,
    }
    return "Bearer " + jwt.encode(claims, BASE_ENV["JWT_SECRET"], algorithm="HS256")


def test_every_route_answers_as_documented_for_good_and_bad_input(
    db, settings_env, user_token, admin_token, queued_task
):
    settings_env(MAX_BODY_BYTES="2048")
    auth, agents, health = (
        validated_client(n, function_app(n).test_client()) for n in ("auth", "agents", "health")
    )
    email, password = f"ann-{uuid.uuid4().hex[:8]}@example.com", "s3cret-pass-phrase-1"
    huge = {"email": email, "password": password, "full_name": "x" * 4000}

    # auth: bad input first, none of it may write
    before = table_counts(db)
    for bad in (
        auth.post("/register", data="{bad", content_type="application/json"),
        auth.post("/register", json={"email": 5, "password": ["x"]}),
        auth.post("/register", json={"email": email}),
        auth.post("/register", json={"email": email, "password": password, "admin": True}),
        auth.post("/register", json={"email": email, "password": "short"}),
        auth.post("/register", data=json.dumps(huge), content_type="application/json"),
        auth.post("/register", data="email=a", content_type="application/x-www-form-urlencoded"),
        auth.get("/register"),
        auth.get("/nope"),
        auth.post("/login", json={"email": email}),
        auth.post("/refresh", json={"refresh_token": "not-a-token"}),
        auth.post("/refresh", json={}),
        auth.get("/me"),
        auth.get("/me", headers={"Authorization": "Basic abc"}),
        auth.get("/me", headers={"Authorization": "Bearer not.a.jwt"}),
        auth.get("/me", headers={"Authorization": _expired_token(uuid.uuid4())}),
    ):
        assert 400 <= bad.status_code < 500, bad.get_data(as_text=True)
    assert table_counts(db) == before
    # a failed sign-in is no bad input: it is counted, for throttling
    assert auth.post("/login", json={"email": email, "password": password}).status_code == 401

    assert auth.post("/register", json={"email": email, "password": password}).status_code == 201
    assert auth.post("/register", json={"email": email, "password": password}).status_code == 409
    assert auth.post("/login", json={"email": email, "password": "wrong-pass-1"}).status_code == 401
    tokens = auth.post("/login", json={"email": email, "password": password}).json
    bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
    assert auth.get("/me", headers=bearer).status_code == 200
    assert (
        auth.get("/me", headers={"Authorization": f"Bearer {tokens['refresh_token']}"}).status_code
        == 401
    )
    assert auth.post("/refresh", json={"refresh_token": tokens["refresh_token"]}).status_code == 200
    assert auth.post("/refresh", json={"refresh_token": tokens["refresh_token"]}).status_code == 401
    second = auth.post("/login", json={"email": email, "password": password}).json
    second_bearer = {"Authorization": f"Bearer {second['access_token']}"}
    assert auth.post("/logout", headers=second_bearer).status_code == 204
    assert auth.post("/logout", headers=second_bearer).status_code == 401

    # agents
    _, token = user_token()
    me = {"Authorization": token}
    assert agents.post("/agents", json={"name": "a1"}).status_code == 401
    before = table_counts(db)
    for bad in (
        agents.post("/agents", json={"name": ""}, headers=me),
        agents.post("/agents", json={"name": "x", "temperature": "0.5"}, headers=me),
        agents.post("/agents", json={"name": "x", "colour": "red"}, headers=me),
        agents.post("/agents", data="{", content_type="application/json", headers=me),
        agents.post("/agents", data="name=x", content_type="text/plain", headers=me),
        agents.post("/agents", json={"name": "x", "system_prompt": "p" * 3000}, headers=me),
        agents.get("/agents?limit=0", headers=me),
        agents.get("/agents?colour=red", headers=me),
        agents.put("/agents", json={}, headers=me),
        agents.get("/nope", headers=me),
    ):
        assert 400 <= bad.status_code < 500, bad.get_data(as_text=True)
    assert table_counts(db) == before
    created = agents.post(
        "/agents", json={"name": "a1", "temperature": 0.3, "system": "simple"}, headers=me
    )
    assert created.status_code == 201
    agent_id = created.json["id"]
    assert agents.post("/agents", json={"name": "a1"}, headers=me).status_code == 409
    other = agents.post("/agents", json={"name": "a2"}, headers=me).json["id"]
    assert agents.get("/agents?limit=1", headers=me).json["has_more"] is True
    assert agents.get(f"/agents/{agent_id}", headers=me).status_code == 200
    assert agents.get(f"/agents/{uuid.uuid4()}", headers=me).status_code == 404
    assert agents.get("/agents/not-a-uuid", headers=me).status_code == 404
    assert agents.patch(f"/agents/{agent_id}", json={"model": None}, headers=me).status_code == 200
    assert agents.patch(f"/agents/{agent_id}", json={"name": None}, headers=me).status_code == 400
    assert agents.patch(f"/agents/{agent_id}", json={"name": "a2"}, headers=me).status_code == 409
    assert agents.patch(f"/agents/{uuid.uuid4()}", json={}, headers=me).status_code == 404

    # tasks
    assert agents.post(f"/agents/{agent_id}/tasks", json={}, headers=me).status_code == 400
    assert (
        agents.post(f"/agents/{uuid.uuid4()}/tasks", json={"input": "hi"}, headers=me).status_code
        == 404
    )
    accepted = agents.post(f"/agents/{agent_id}/tasks", json={"input": "Say hi"}, headers=me)
    assert accepted.status_code == 202
    task_id = accepted.json["id"]
    assert agents.get("/tasks", headers=me).status_code == 200
    assert (
        agents.get(f"/tasks?agent_id={agent_id}&status=queued&limit=5", headers=me).status_code
        == 200
    )
    assert agents.get("/tasks?status=lost", headers=me).status_code == 400
    assert agents.get(f"/tasks/{task_id}", headers=me).status_code == 200
    assert agents.get(f"/tasks/{uuid.uuid4()}", headers=me).status_code == 404
    assert agents.get("/tasks/{task_id}", headers=me).status_code == 404
    assert agents.post(f"/tasks/{uuid.uuid4()}/cancel", headers=me).status_code == 404
    assert agents.get(f"/tasks/{task_id}/cancel", headers=me).status_code == 405
    queued = queued_task("wait")
    owner = {"Authorization": bearer_for(queued.owner_id)}
    assert agents.post(f"/tasks/{queued.task_id}/cancel", headers=owner).status_code == 200
    assert agents.post(f"/tasks/{queued.task_id}/cancel", headers=owner).status_code == 200
    finished = agents.get(f"/tasks/{task_id}", headers=me).json["status"]
    cancel = agents.post(f"/tasks/{task_id}/cancel", headers=me)
    assert cancel.status_code == (200 if finished in ("queued", "canceled") else 409)
    if finished not in ("queued", "canceled"):
        assert cancel.json["task_status"] == finished
    assert agents.delete(f"/agents/{other}", headers=me).status_code == 204
    assert agents.delete(f"/agents/{other}", headers=me).status_code == 404
    assert (
        agents.delete(f"/agents/{agent_id}", headers={"Authorization": "Bearer x"}).status_code
        == 401
    )

    # health
    assert health.get("/").status_code == 200
    assert health.head("/").status_code == 200
    assert health.post("/").status_code == 405
    assert health.get("/nope").status_code == 404
    _, admin = admin_token()
    assert health.get("/metrics?window=1h", headers={"Authorization": admin}).status_code == 200
    assert health.get("/metrics?window=2h", headers={"Authorization": admin}).status_code == 400
    assert health.get("/metrics", headers=me).status_code == 403
    assert health.get("/metrics").status_code == 401
    assert health.get("/dashboard").status_code == 200
    assert health.get("/dashboard/dashboard.js").status_code == 200
    assert health.get("/dashboard/uPlot.min.css").status_code == 200
    assert health.get("/dashboard/nope.js").status_code == 404

    # every documented operation of these functions answered at least once with success and
    # once with an error (billing and the webhooks: tests/functions/test_billing.py)
    seen = auth.seen + agents.seen + health.seen
    for path, method, _ in _operations():
        if _split(path)[0] not in {"auth", "agents", "health"}:
            continue
        statuses = {s for p, m, s in seen if p == path and m == method.upper()}
        assert any(s < 300 for s in statuses), f"{method} {path}: no success exercised"
        if path not in ("/health/", "/health/dashboard"):  # these two have no 4xx of their own
            assert any(400 <= s < 500 for s in statuses), f"{method} {path}: no error exercised"
    assert not any(s >= 500 for _, _, s in seen)


def test_health_down_answer_is_documented(settings_env):
    settings_env(DATABASE_URL="postgresql+pg8000://postgres@127.0.0.1:1/x")
    response = validated_client("health", function_app("health").test_client()).get("/")
    assert response.status_code == 503
