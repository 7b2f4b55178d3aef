"""Access tokens die with their session and their user: logout, a reused refresh token, a
disabled or deleted account. Every authenticated route of every function refuses such a
token (401) within `AUTH_SESSION_CHECK_SECONDS`, and changes nothing."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import delete, update

from shared_layer.database import session_scope
from shared_layer.models import Agent, AuthSession, RefreshToken, User
from tests.conftest import table_counts
from tests.support.problems import assert_problem

PASSWORD = "Corr3ct-horse-battery"
EMAIL = "ann@example.com"

# (function, method, path) of routes that read, change or delete the caller's data; {agent}
# is an agent of the caller's.
ROUTES = [
    ("auth", "GET", "/me"),
    ("agents", "GET", "/agents"),
    ("agents", "POST", "/agents"),
    ("agents", "GET", "/agents/{agent}"),
    ("agents", "PATCH", "/agents/{agent}"),
    ("agents", "DELETE", "/agents/{agent}"),
    ("agents", "POST", "/agents/{agent}/tasks"),
    ("agents", "GET", "/tasks"),
    ("billing", "GET", "/subscription"),
    ("billing", "POST", "/portal"),
    ("health", "GET", "/metrics"),
]
BODIES = {"POST /agents": {"name": "new"}, "PATCH /agents/{agent}": {"name": "renamed"}}


@pytest.fixture
def checked_every_request(settings_env: Callable[..., None]) -> None:
    """No check is trusted for a while (AUTH_SESSION_CHECK_SECONDS=0): as an instance that has
    not seen the session lately would ask."""
    settings_env(AUTH_SESSION_CHECK_SECONDS="0")


@pytest.fixture
def signed_in(db: Any, client: Callable[[str], Any]) -> dict[str, Any]:
    """Ann, registered and signed in, with an agent; her tokens and agent id."""
    auth = client("auth")
    assert auth.post("/register", json={"email": EMAIL, "password": PASSWORD}).status_code == 201
    pair = auth.post("/login", json={"email": EMAIL, "password": PASSWORD}).get_json()
    bearer = {"Authorization": f"Bearer {pair['access_token']}"}
    agent = client("agents").post("/agents", json={"name": "helper"}, headers=bearer)
    assert agent.status_code == 201
    return {**pair, "bearer": bearer, "agent": agent.get_json()["id"]}


def call(client: Callable[[str], Any], route: tuple[str, str, str], me: dict[str, Any]) -> Any:
    function, method, path = route
    body = BODIES.get(f"{method} {path}")
    if path.endswith("/tasks") and method == "POST":
        body = {"input": "hello"}
    return client(function).open(
        path.format(agent=me["agent"]), method=method, json=body, headers=me["bearer"]
    )


def test_logout_ends_the_session_its_tokens_with_it(signed_in, client, db):
    auth = client("auth")
    me = signed_in
    other = auth.post("/login", json={"email": EMAIL, "password": PASSWORD}).get_json()

    assert auth.post("/logout", headers=me["bearer"]).status_code == 204

    ended = assert_problem(auth.get("/me", headers=me["bearer"]), 401)
    assert "session has ended" in ended["detail"]
    assert_problem(auth.post("/refresh", json={"refresh_token": me["refresh_token"]}), 401)
    assert_problem(auth.post("/logout", headers=me["bearer"]), 401)
    # the other sign-in (another device) is untouched
    other_bearer = {"Authorization": f"Bearer {other['access_token']}"}
    assert auth.get("/me", headers=other_bearer).status_code == 200
    assert auth.post("/refresh", json={"refresh_token": other["refresh_token"]}).status_code == 200
    with session_scope() as session:
        sessions = {s.revoked_reason: s.id for s in session.query(AuthSession)}
        assert set(sessions) == {"logout", None}
        ended = session.query(RefreshToken).filter_by(session_id=sessions["logout"]).all()
        assert ended
        assert all(token.revoked_at is not None for token in ended)


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: f"{r[0]} {r[1]} {r[2]}")
def test_every_authenticated_route_refuses_a_token_whose_session_ended(
    signed_in, client, db, route
):
    me = signed_in
    assert client("auth").post("/logout", headers=me["bearer"]).status_code == 204
    before = table_counts(db)

    assert "session has ended" in assert_problem(call(client, route, me), 401)["detail"]
    assert table_counts(db) == before


@pytest.mark.parametrize("how", ["disabled", "deleted"])
@pytest.mark.parametrize("route", ROUTES, ids=lambda r: f"{r[0]} {r[1]} {r[2]}")
def test_every_authenticated_route_refuses_a_disabled_or_deleted_users_token(
    signed_in, checked_every_request, client, db, route, how
):
    me = signed_in
    with session_scope() as session:
        if how == "disabled":
            session.execute(update(User).values(is_active=False))
        else:
            session.execute(delete(User))
    before = table_counts(db)

    response = call(client, route, me)

    assert "disabled" in assert_problem(response, 401)["detail"]
    assert table_counts(db) == before


def test_a_reused_refresh_token_ends_the_session_of_its_access_tokens(signed_in, client, db):
    auth = client("auth")
    me = signed_in
    fresh = auth.post("/refresh", json={"refresh_token": me["refresh_token"]}).get_json()
    fresh_bearer = {"Authorization": f"Bearer {fresh['access_token']}"}
    assert auth.get("/me", headers=fresh_bearer).status_code == 200

    assert_problem(auth.post("/refresh", json={"refresh_token": me["refresh_token"]}), 401)

    for bearer in (me["bearer"], fresh_bearer):  # the thief's and the owner's access tokens
        assert "session has ended" in assert_problem(auth.get("/me", headers=bearer), 401)["detail"]
    assert_problem(client("agents").get("/agents", headers=fresh_bearer), 401)


def test_a_disabled_account_is_refused_everywhere_within_the_stated_bound(
    signed_in, client, settings_env, db
):
    """Another instance that checked the session a moment ago trusts that check for
    AUTH_SESSION_CHECK_SECONDS; then it asks again and refuses."""
    settings_env(AUTH_SESSION_CHECK_SECONDS="0.5")
    agents, me = client("agents"), signed_in
    assert agents.get("/agents", headers=me["bearer"]).status_code == 200  # checked and trusted
    with session_scope() as session:  # disabled by another instance (an admin, the database)
        session.execute(update(User).values(is_active=False))

    still_trusted = agents.get("/agents", headers=me["bearer"])
    time.sleep(0.6)
    refused = agents.get("/agents", headers=me["bearer"])

    assert still_trusted.status_code == 200
    assert_problem(refused, 401)


def test_logging_out_takes_effect_at_once_on_the_instance_that_did_it(signed_in, client):
    """The instance that ends a session forgets its own trust in it, whatever the bound."""
    auth, me = client("auth"), signed_in
    assert auth.get("/me", headers=me["bearer"]).status_code == 200  # trusted for 5 s

    assert auth.post("/logout", headers=me["bearer"]).status_code == 204

    assert_problem(client("agents").get("/agents", headers=me["bearer"]), 401)


def test_sign_in_records_the_session_with_its_client(db, client, settings_env):
    settings_env(TRUSTED_PROXY_HOPS="1")
    auth = client("auth")
    auth.post("/register", json={"email": EMAIL, "password": PASSWORD})
    headers = {"User-Agent": "Mozilla/5.0 (X11)\x7f", "X-Forwarded-For": "203.0.113.5"}

    pair = auth.post("/login", json={"email": EMAIL, "password": PASSWORD}, headers=headers)

    assert pair.status_code == 200
    with session_scope() as session:
        [stored] = session.query(AuthSession).all()
        assert stored.user_agent == "Mozilla/5.0 (X11)"
        assert stored.ip_address == "203.0.113.5"
        assert stored.revoked_at is None
        assert stored.created_at == stored.last_used_at


def test_a_session_of_another_user_is_refused(signed_in, checked_every_request, client, db):
    """A token naming a real session that is not its subject's (only a leaked signing key can
    make one) is refused."""
    from shared_layer.auth import create_access_token

    with session_scope() as session:
        [stored] = session.query(AuthSession).all()
        other = User(email="bob@example.com", password_hash="x")
        session.add(other)
        session.flush()
        token = create_access_token(user_id=other.id, session_id=stored.id)
        session.add(Agent(owner_id=other.id, name="bob's"))

    response = client("agents").get("/agents", headers={"Authorization": f"Bearer {token}"})

    assert_problem(response, 401)
    assert uuid.UUID(signed_in["agent"])
