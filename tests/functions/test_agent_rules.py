"""One set of agent rules: the agents API accepts (201/200) exactly the agents a runner can run,
and refuses the others with a 400 naming the field, writing nothing. The runtime's verdict is
`resolve_agent_config` on the agent as a runner reads it."""

from __future__ import annotations

from typing import Any

import pytest

from shared_layer.agent_config import resolve_agent_config
from shared_layer.errors import InvalidInput
from shared_layer.models import Agent
from tests.conftest import table_counts
from tests.support.problems import assert_problem

# Each rule at and beyond its limits.
CASES: list[tuple[str, Any]] = [
    ("system", "simple"),
    ("system", "enhanced"),
    ("model", "gpt-4o-mini"),
    ("model", "org/model:tag@v1+x"),
    ("model", "m" * 100),
    ("model", "m" * 101),
    ("model", ""),
    ("model", "bad model"),
    ("model", "-leading-dash"),
    ("temperature", 0),
    ("temperature", 2),
    ("temperature", 1.5),
    ("temperature", -0.01),
    ("temperature", 2.01),
    ("max_tokens", 1),
    ("max_tokens", 128_000),
    ("max_tokens", 0),
    ("max_tokens", 128_001),
    ("timeout_seconds", 1),
    ("timeout_seconds", 3600),
    ("timeout_seconds", 0),
    ("timeout_seconds", 3601),
    ("system_prompt", "Be brief."),
    ("system_prompt", "p" * 20_000),
    ("system_prompt", "p" * 20_001),
    ("system_prompt", ""),
    ("system_prompt", " "),
    ("system_prompt", "\n\t  \n"),
    ("system_prompt", "\u00a0\u2003"),  # no-break and em spaces: whitespace too
]


def case_id(case: tuple[str, Any]) -> str:
    field, value = case
    text = repr(value)
    return f"{field}={text if len(text) < 20 else text[:8] + f'...({len(value)})'}"


def runtime_runs(field: str, value: Any) -> bool:
    """Whether a runner runs an agent with this one setting (the rest the defaults); when it
    does not, it names that setting."""
    refused: list[str] = []
    try:
        resolve_agent_config(Agent(**{field: value}))
    except InvalidInput as exc:
        refused = [e["field"] for e in exc.errors]
    assert refused in ([], [field])
    return not refused


@pytest.fixture
def api(client: Any) -> Any:
    return client("agents")


@pytest.mark.parametrize(("field", "value"), CASES, ids=[case_id(c) for c in CASES])
def test_create_accepts_exactly_the_agents_the_runtime_runs(db, api, user_token, field, value):
    _, token = user_token()
    before = table_counts(db)

    response = api.post(
        "/agents", json={"name": "rules", field: value}, headers={"Authorization": token}
    )

    if runtime_runs(field, value):
        assert response.status_code == 201, response.get_data(as_text=True)
    else:
        assert_problem(response, 400, field, fields={field})
        assert table_counts(db) == before


@pytest.mark.parametrize(("field", "value"), CASES, ids=[case_id(c) for c in CASES])
def test_patch_accepts_exactly_the_agents_the_runtime_runs(db, api, user_token, field, value):
    _, token = user_token()
    auth = {"Authorization": token}
    created = api.post("/agents", json={"name": "rules"}, headers=auth)
    assert created.status_code == 201
    url = f"/agents/{created.json['id']}"

    response = api.patch(url, json={field: value}, headers=auth)

    if runtime_runs(field, value):
        assert response.status_code == 200, response.get_data(as_text=True)
    else:
        assert_problem(response, 400, field, fields={field})
        assert api.get(url, headers=auth).json == created.json  # nothing written


def test_a_system_prompt_of_whitespace_alone_is_refused_on_create_and_on_patch(db, api, user_token):
    _, token = user_token()
    auth = {"Authorization": token}
    before = table_counts(db)
    refused = api.post("/agents", json={"name": "blank", "system_prompt": " \n\t "}, headers=auth)
    assert_problem(refused, 400, "system_prompt", fields={"system_prompt"})
    assert table_counts(db) == before

    created = api.post("/agents", json={"name": "kept", "system_prompt": "Be kind."}, headers=auth)
    assert created.status_code == 201
    url = f"/agents/{created.json['id']}"
    refused = api.patch(url, json={"system_prompt": "   "}, headers=auth)
    assert_problem(refused, 400, "system_prompt", fields={"system_prompt"})
    assert api.get(url, headers=auth).json["system_prompt"] == "Be kind."


def test_a_patch_is_checked_as_the_agent_it_would_leave(db, api, user_token, settings_env):
    """The stored settings, the change and the environment's defaults together: a PATCH that
    keeps a setting a runner refuses (stored before the rule) is refused, naming it, until the
    same PATCH mends it."""
    from shared_layer.database import session_scope

    user_id, token = user_token()
    auth = {"Authorization": token}
    with session_scope() as session:
        stored = Agent(owner_id=user_id, name="legacy", system_prompt="   ")
        session.add(stored)
        session.flush()
        url = f"/agents/{stored.id}"

    assert_problem(
        api.patch(url, json={"name": "renamed"}, headers=auth),
        400,
        "system_prompt",
        fields={"system_prompt"},
    )
    mended = api.patch(url, json={"name": "renamed", "system_prompt": None}, headers=auth)
    assert mended.status_code == 200, mended.json
    assert (mended.json["name"], mended.json["system_prompt"]) == ("renamed", None)
