"""The shared HTTP adapter: challenges, and configuration refused at start and at request time."""

from __future__ import annotations

import pytest
from flask import Flask
from pydantic import BaseModel

from shared_layer.config import ConfigError
from shared_layer.errors import InvalidInput
from shared_layer.http import ApiRequest, Router, parse_json, parse_json_as
from tests.conftest import function_app
from tests.support.problems import assert_problem

REFUSED = {"STRATUS_ENV": "production", "JWT_SECRET": "change-me", "LLM_PROVIDER": "offline"}


def test_missing_token_gets_a_bare_bearer_challenge(db, client):
    r = client("auth").get("/me")
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"] == 'Bearer realm="stratus"'


def test_bad_token_gets_an_invalid_token_challenge(db, client):
    r = client("auth").get("/me", headers={"Authorization": "Bearer not-a-jwt"})
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"] == 'Bearer realm="stratus", error="invalid_token"'


def test_a_router_refuses_to_start_on_a_configuration_production_refuses(settings_env):
    settings_env(**REFUSED)
    with pytest.raises(ConfigError, match="JWT_SECRET"):
        Router("auth")
    Router("health", check_config=False)  # health must start to report the problems


def test_configuration_refused_after_start_is_a_503_problem_naming_no_value(settings_env):
    router = Router("probe")

    @router.route("GET", "/needs-settings")
    def needs_settings(req: ApiRequest) -> dict[str, str]:
        from shared_layer.config import get_settings

        return {"env": get_settings().environment}

    settings_env(**REFUSED)
    app = Flask("probe")
    with app.test_request_context("/needs-settings"):
        from flask import request

        response = router.dispatch(request)
    assert response.status_code == 503
    assert response.mimetype == "application/problem+json"
    assert "change-me" not in response.get_data(as_text=True)


@pytest.mark.parametrize("path", ["/favicon.ico", "/robots.txt"])
def test_paths_functions_framework_answers_itself_are_problems_too(db, client, path):
    r = client("auth").get(path)
    assert r.status_code == 404
    assert r.mimetype == "application/problem+json"
    assert r.json["detail"] == f"no route {path}"


def test_an_exception_that_escapes_the_router_is_a_500_problem_saying_nothing_of_it(json_logs):
    """What functions-framework's `crash_handler` answered as text (`str(e)`) is a problem."""
    app = function_app("auth")
    with app.test_request_context("/register", method="POST"):
        try:
            raise RuntimeError("the secret cause")
        except RuntimeError as exc:
            response = app.handle_exception(exc)

    problem = assert_problem(response, 500, never=["the secret cause", "RuntimeError"])
    assert problem["type"] == "https://stratus.dev/problems/internal"
    assert response.headers["X-Google-Status"] == "crash"  # the platform logs a crash by it
    assert any("the secret cause" in line.get("stack_trace", "") for line in json_logs)


class _Event(BaseModel):
    id: str
    created: int


def test_parse_json_as_says_where_the_json_is_malformed_or_which_fields_are_invalid():
    assert parse_json_as(_Event, b'{"id": "e", "created": 1}', where="event") == _Event(
        id="e", created=1
    )
    with pytest.raises(InvalidInput, match=r"not valid JSON.*line 1 column 2"):
        parse_json_as(_Event, b"{bad", where="event")
    with pytest.raises(InvalidInput, match="invalid event: created") as refused:
        parse_json_as(_Event, b'{"id": "e", "created": "soon"}', where="event")
    assert [e["field"] for e in refused.value.errors] == ["created"]


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"id": "e", "created": 1, "extra": ' + b"[" * 300 + b"]" * 300 + b"}",
        b'{"id": "e", "created": 1, "extra": NaN}',
        b'{"id": "e", "created": 1, "extra": [-Infinity]}',
        b'{"id": "e\\ud800", "created": 1}',
        b'{"id": "\xff", "created": 1}',
    ],
    ids=["deep", "deep-in-a-field", "nan", "infinity", "lone-surrogate", "not-utf-8"],
)
def test_parse_json_and_parse_json_as_refuse_the_same_bodies_alike(body):
    """The webhooks' one-pass parse and every other route's parse read JSON the same way."""
    with pytest.raises(InvalidInput) as plain:
        parse_json(body)
    with pytest.raises(InvalidInput) as as_model:
        parse_json_as(_Event, body, where="event")
    assert as_model.value.detail == plain.value.detail
