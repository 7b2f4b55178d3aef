"""The whole local stack keeps the contract docs/openapi.yaml states, for any input: Schemathesis
generates requests to every documented operation from the document itself — valid ones, and
ones that break it on purpose (wrong types, too long, missing, extra, NUL, …) — and sends them,
with a signed-in user's bearer token, to the local stack's WSGI app (every function mounted as
`stratus dev` mounts them), on SQLite and PostgreSQL.

A response fails the test when it is a 5xx; when its status, content type, headers or body are
not what the document says for that operation; when a request the document allows is refused
(400/422), or one it forbids is accepted; or when a wrong method is not a 405. Billing talks to
the loopback Stripe server, and the webhooks get every generated body signed as Stripe and
SendGrid sign theirs, so the events go all the way in. Bounded by `max-examples` per operation,
so CI stays fast (and deterministic); `STRATUS_CONTRACT_EXAMPLES=500` explores further, with
fresh random inputs each run. A failure prints the request to replay.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig
from schemathesis.core.parameters import ParameterLocation

from tests.conftest import STRIPE_WEBHOOK_SECRET
from tests.support.fake_stripe import stripe_signature
from tests.support.openapi import SPEC_PATH

HEADER = ParameterLocation.HEADER

PASSWORD = "contract-correct-horse-42"

# What no JSON Schema can say, told to the checks instead: a password that fits the document
# may still be too easy to guess (zxcvbn), so registration may refuse a schema-valid body (400).
EXAMPLES = int(os.environ.get("STRATUS_CONTRACT_EXAMPLES", "12"))  # per operation and phase
CONFIG = SchemathesisConfig.from_str(
    f"""
[generation]
mode = "all"
max-examples = {EXAMPLES}
deterministic = {str(EXAMPLES <= 12).lower()}

[phases.examples]
enabled = true

[phases.coverage]
enabled = true

[phases.fuzzing]
enabled = true

[phases.stateful]
enabled = false

[checks]
enabled = true
# Needs two users and ids from responses; test_sessions, test_agents and test_auth prove it.
object_level_authorization.enabled = false
ignored_auth.enabled = false
use_after_free.enabled = false
ensure_resource_availability.enabled = false

[[operations]]
include-operation-id = "register"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "409"]
"""
)
SCHEMA = schemathesis.openapi.from_path(SPEC_PATH, config=CONFIG)


@pytest.fixture(scope="module")
def stack() -> Any:
    """The local stack's app, built once: every function as functions-framework builds it,
    mounted under `/<name>` (settings are read per request, so each test's database applies)."""
    from stratus.local_stack import build_app

    return build_app()


@pytest.fixture
def signed_in(
    db: Any,
    stack: Any,
    settings_env: Callable[..., None],
    fake_stripe: Any,
    push_to_task_runner: list[int],
) -> dict[str, str]:
    """A signed-in user's bearer token (with an agent to find), the webhooks configured. One per
    operation: its examples share the user and the database, as a client's requests would."""
    from werkzeug.test import Client

    client = Client(stack)
    email = f"contract-{uuid.uuid4().hex[:8]}@example.com"
    assert (
        client.post("/auth/register", json={"email": email, "password": PASSWORD}).status_code
        == 201
    )
    tokens = client.post("/auth/login", json={"email": email, "password": PASSWORD}).json
    assert tokens is not None
    bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
    assert (
        client.post("/agents/agents", json={"name": "contract"}, headers=bearer).status_code == 201
    )
    return bearer


@SCHEMA.parametrize()
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
def test_every_documented_operation_keeps_the_contract_for_any_input(
    case: Any, stack: Any, signed_in: dict[str, str], sendgrid_signer: Any
) -> None:
    signers: dict[str, Callable[[bytes], dict[str, str]]] = {
        "POST /stripe_webhook/": lambda body: {
            "Stripe-Signature": stripe_signature(body, STRIPE_WEBHOOK_SECRET)
        },
        "POST /sendgrid_webhook/": sendgrid_signer.headers,
    }
    sign = signers.get(case.operation.label)
    headers_as_generated = case.meta is not None and case.meta.is_negative_at(HEADER)
    if sign is not None and isinstance(case.body, dict | list) and not headers_as_generated:
        send_signed(case, stack, sign)
        return
    case.operation.schema.app = stack  # served in process, through WSGI
    # The user's token goes with every request but one whose headers are the broken part.
    case.call_and_validate(headers=None if headers_as_generated else signed_in, app=stack)


def send_signed(case: Any, stack: Any, sign: Callable[[bytes], dict[str, str]]) -> None:
    """Send the generated body as the sender would, signed, and hold the answer to the
    document: a signature proves who sent it, not that its content is any good. (A case whose
    signature headers are themselves the broken part goes out as generated instead.)"""
    from werkzeug.test import Client

    body = json.dumps(case.body).encode()
    headers = {"Content-Type": "application/json", **sign(body)}
    response = Client(stack).open(
        case.formatted_path, method=case.method, data=body, headers=headers
    )
    case.validate_response(response)
