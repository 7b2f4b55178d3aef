"""Bodies built to break the parser or the database, sent to every route that reads JSON,
through functions-framework: each is a 400 problem saying what was wrong, with nothing written.

One parser reads every JSON body (`shared_layer.http.parse_json`) and one base model every
request body (`schemas.common.StrictBody`, which refuses NUL in any string), so these hold for
every route at once; the webhooks' bodies are signed, so that they get past their signature
checks.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import STRIPE_WEBHOOK_SECRET, table_counts
from tests.support.fake_stripe import stripe_signature
from tests.support.problems import assert_problem

DEEP = 100_000
NESTED = b"[" * DEEP + b"]" * DEEP
NESTED_IN_A_FIELD = b'{"name": ' + NESTED + b"}"
ROUTES = [
    ("auth", "POST", "/register"),
    ("auth", "POST", "/login"),
    ("auth", "POST", "/refresh"),
    ("agents", "POST", "/agents"),
    ("agents", "PATCH", "/agents/{agent}"),
    ("agents", "POST", "/agents/{agent}/tasks"),
    ("billing", "POST", "/checkout"),
    ("metrics_cleanup", "POST", "/"),
    ("stripe_webhook", "POST", "/"),
    ("sendgrid_webhook", "POST", "/"),
]


@pytest.fixture
def send(
    db: Any,
    client: Callable[[str], Any],
    user_token: Callable[..., Any],
    admin_token: Callable[..., Any],
    stripe_settings: None,
    sendgrid_signer: Any,
) -> Callable[[str, str, str, bytes], Any]:
    """`send(function, method, path, body)`: the request as the route needs it to be read
    (a bearer token, an agent, a signature), with `body` as the JSON body."""
    _, token = user_token()
    _, admin = admin_token()
    agent = client("agents").post("/agents", json={"name": "a"}, headers={"Authorization": token})
    assert agent.status_code == 201

    def request(function: str, method: str, path: str, body: bytes) -> Any:
        headers = {"Authorization": admin if function == "metrics_cleanup" else token}
        if function == "stripe_webhook":
            headers = {"Stripe-Signature": stripe_signature(body, STRIPE_WEBHOOK_SECRET)}
        elif function == "sendgrid_webhook":
            headers = sendgrid_signer.headers(body)
        return client(function).open(
            path.format(agent=agent.json["id"]),
            method=method,
            data=body,
            headers=headers,
            content_type="application/json",
        )

    return request


@pytest.mark.parametrize(("function", "method", "path"), ROUTES)
@pytest.mark.parametrize("body", [NESTED, NESTED_IN_A_FIELD], ids=["nested", "nested-in-a-field"])
def test_json_nested_100000_deep_is_a_400_naming_the_nesting(
    db, send, function, method, path, body
):
    before = table_counts(db)

    response = send(function, method, path, body)

    assert_problem(response, 400, "nested", "200 levels")
    assert table_counts(db) == before


@pytest.mark.parametrize(("function", "method", "path"), ROUTES)
@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_which_json_does_not_have_are_a_400(
    db, send, function, method, path, token
):
    before = table_counts(db)

    response = send(function, method, path, b'{"value": ' + token.encode() + b"}")

    assert_problem(response, 400, "not valid JSON")
    assert table_counts(db) == before


@pytest.mark.parametrize(("function", "method", "path"), ROUTES)
def test_a_lone_surrogate_escape_which_no_text_can_hold_is_a_400(db, send, function, method, path):
    before = table_counts(db)

    response = send(function, method, path, json.dumps({"name": "\ud800"}).encode())

    assert_problem(response, 400, "not valid JSON")
    assert table_counts(db) == before


# NUL (U+0000): no text column of PostgreSQL can hold it, so no string of a body may.

PASSWORD = "Corr3ct-horse-battery"
TEXT_FIELDS = {
    ("auth", "POST", "/register"): {
        "email": "ann@example.com",
        "password": PASSWORD,
        "full_name": "Ann Example",
    },
    ("auth", "POST", "/login"): {"email": "ann@example.com", "password": PASSWORD},
    ("auth", "POST", "/refresh"): {"refresh_token": "rt_" + "x" * 43},
    ("agents", "POST", "/agents"): {
        "name": "helper",
        "description": "helps",
        "model": "gpt-4o-mini",
        "system_prompt": "Be brief.",
    },
    ("agents", "PATCH", "/agents/{agent}"): {
        "name": "helper",
        "description": "helps",
        "model": "gpt-4o-mini",
        "system_prompt": "Be brief.",
    },
    ("agents", "POST", "/agents/{agent}/tasks"): {"input": "Say hello"},
    ("billing", "POST", "/checkout"): {"plan": "pro"},
}
NUL_CASES = [(*route, field, body) for route, body in TEXT_FIELDS.items() for field in body]


@pytest.mark.parametrize(("function", "method", "path", "field", "valid"), NUL_CASES)
def test_a_nul_in_any_text_field_is_a_400_naming_the_field(
    db, send, function, method, path, field, valid
):
    body = {**valid, field: valid[field][:2] + "\x00" + valid[field][2:]}
    before = table_counts(db)

    response = send(function, method, path, json.dumps(body).encode())

    assert_problem(response, 400, fields={field})
    assert table_counts(db) == before
