"""The auth function through functions-framework: happy paths and every kind of bad input.

Each bad request must give an `application/problem+json` 4xx naming what was wrong, leave the
database as it was, and carry no stack trace, password or secret.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import unicodedata
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from sqlalchemy import delete, select, update

from shared_layer.auth import (
    create_email_verification_token,
    create_password_reset_token,
    verify_password,
)
from shared_layer.database import session_scope
from shared_layer.models import User
from tests.conftest import BASE_ENV, table_counts
from tests.support.cold_imports import (
    ORM,
    Step,
    first_request_imports,
    migrated_sqlite,
    serve_in_turn,
)
from tests.support.problems import assert_problem as problem

PASSWORD = "Corr3ct-horse-battery"


def assert_problem(response: Any, status: int, *, fields: set[str] | None = None) -> dict[str, Any]:
    """A problem leaking neither the signing key nor the password used here."""
    return problem(response, status, fields=fields, never=(BASE_ENV["JWT_SECRET"], PASSWORD))


@pytest.fixture
def auth_client(client: Any) -> Any:
    return client("auth")


def register(c: Any, email: str = "ann@example.com", password: str = PASSWORD) -> Any:
    return c.post("/register", json={"email": email, "password": password})


def login(c: Any, email: str = "ann@example.com", password: str = PASSWORD) -> Any:
    return c.post("/login", json={"email": email, "password": password})


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# -- happy paths ----------------------------------------------------------------------------


def test_register_creates_a_user_with_a_normalised_email(db, auth_client):
    response = auth_client.post(
        "/register",
        json={"email": "  Ann@Example.COM ", "password": PASSWORD, "full_name": "Ann Lee"},
    )

    assert response.status_code == 201, response.get_data(as_text=True)
    body = response.get_json()
    assert body["email"] == "ann@example.com"
    assert body["full_name"] == "Ann Lee"
    assert body["is_active"] is True
    assert body["email_verified"] is False
    uuid.UUID(body["id"])
    assert "password" not in response.get_data(as_text=True)
    assert table_counts(db)["users"] == 1


def test_register_an_existing_email_is_a_conflict(db, auth_client):
    register(auth_client)
    before = table_counts(db)

    body = assert_problem(register(auth_client, email="ANN@example.com"), 409)

    assert "already exists" in body["detail"]
    assert table_counts(db) == before


@pytest.mark.parametrize(
    ("password", "reason"),
    [
        ("password1", "at least 15 characters"),
        ("Tr0ub4dor&3", "at least 15 characters"),  # strong, but short
        ("password1password1", "too easy to guess"),  # common, repeated
        ("qwertyuiopasdfghjkl", "too easy to guess"),  # a keyboard row
        ("aaaaaaaaaaaaaaaaaaaa", "too easy to guess"),
        ("ann.lee@example.com", "email address or name"),  # the user's own address
        ("AnnLee-1990-01-01!!", "email address or name"),  # the name and a date
        ("Ann-Lee-example-2024", "email address or name"),
        ("é" * 36 + "1", "at most 72 bytes"),  # 37 characters, 73 bytes
        ("ﷺ" * 5, "at most 72 bytes"),  # 5 characters that NFKC makes 90: 162 bytes
    ],
)
def test_register_with_a_weak_password_names_the_field(db, auth_client, password, reason):
    before = table_counts(db)

    response = auth_client.post(
        "/register",
        json={"email": "ann.lee@example.com", "full_name": "Ann Lee", "password": password},
    )

    body = assert_problem(response, 400, fields={"password"})
    assert reason in body["errors"][0]["message"]
    assert table_counts(db) == before


@pytest.mark.parametrize(
    "password",
    ["correct-horse-42 staple", "Correct horse battery staple", "Ünïcödé-passphrase-2026"],
)
def test_register_accepts_a_long_unguessable_password_with_no_composition_rules(
    db, auth_client, password
):
    response = auth_client.post(
        "/register",
        json={"email": "ann.lee@example.com", "full_name": "Ann Lee", "password": password},
    )

    assert response.status_code == 201, response.get_data(as_text=True)


def test_login_returns_a_bearer_token_pair(db, auth_client):
    register(auth_client)

    response = login(auth_client, email="ANN@example.com ")

    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 900
    assert body["refresh_token"].startswith("rt_")
    assert jwt.get_unverified_header(body["access_token"])["alg"] == "HS256"


def test_wrong_password_and_unknown_email_get_the_same_401(db, auth_client):
    register(auth_client)

    wrong_password = assert_problem(login(auth_client, password="Wr0ng-password"), 401)
    unknown_email = assert_problem(login(auth_client, email="bob@example.com"), 401)

    assert wrong_password["detail"] == unknown_email["detail"] == "incorrect email or password"


def test_disabled_user_cannot_log_in(db, auth_client):
    register(auth_client)
    with session_scope() as session:
        session.execute(update(User).values(is_active=False))

    assert_problem(login(auth_client), 401)


def test_me_returns_the_caller(db, auth_client):
    register(auth_client)
    access = login(auth_client).get_json()["access_token"]

    response = auth_client.get("/me", headers=bearer(access))

    assert response.status_code == 200
    assert response.get_json()["email"] == "ann@example.com"


def test_refresh_rotates_and_the_old_token_is_then_refused(db, auth_client):
    register(auth_client)
    first = login(auth_client).get_json()

    response = auth_client.post("/refresh", json={"refresh_token": first["refresh_token"]})

    assert response.status_code == 200, response.get_data(as_text=True)
    second = response.get_json()
    assert second["refresh_token"] != first["refresh_token"]
    assert auth_client.get("/me", headers=bearer(second["access_token"])).status_code == 200
    reuse = auth_client.post("/refresh", json={"refresh_token": first["refresh_token"]})
    assert "already used" in assert_problem(reuse, 401)["detail"]
    again = auth_client.post("/refresh", json={"refresh_token": second["refresh_token"]})
    assert_problem(again, 401)  # the reuse revoked the family


def test_unknown_refresh_token_is_401(db, auth_client):
    before = table_counts(db)

    assert_problem(auth_client.post("/refresh", json={"refresh_token": "rt_forged"}), 401)

    assert table_counts(db) == before


# -- the bad-input matrix -----------------------------------------------------------------

VALID_BODY = {
    "/register": {"email": "ann@example.com", "password": PASSWORD},
    "/login": {"email": "ann@example.com", "password": PASSWORD},
    "/refresh": {"refresh_token": "rt_" + "x" * 43},
}
POST_ROUTES = sorted(VALID_BODY)
WRONG_TYPES = {
    "/register": (
        {"email": 42, "password": ["x"], "full_name": {"a": 1}},
        {"email", "password", "full_name"},
    ),
    "/login": ({"email": True, "password": 12345678}, {"email", "password"}),
    "/refresh": ({"refresh_token": 5}, {"refresh_token"}),
}
MISSING = {
    "/register": {"email", "password"},
    "/login": {"email", "password"},
    "/refresh": {"refresh_token"},
}


@pytest.fixture
def unchanged(db):
    """Registers a user first (so there is data to keep), then checks nothing changed."""
    from tests.conftest import function_app

    register(function_app("auth").test_client())
    before = table_counts(db)
    yield
    assert table_counts(db) == before


@pytest.mark.parametrize("route", POST_ROUTES)
@pytest.mark.parametrize("raw", ['{"email": ', "{'single': 'quotes'}", "nul\x00l", "[1, 2,]"])
def test_malformed_json_is_400(unchanged, auth_client, route, raw):
    response = auth_client.post(route, data=raw, content_type="application/json")

    assert "not valid JSON" in assert_problem(response, 400)["detail"]


@pytest.mark.parametrize("route", POST_ROUTES)
def test_empty_body_is_400(unchanged, auth_client, route):
    response = auth_client.post(route, data=b"", content_type="application/json")

    assert "empty" in assert_problem(response, 400)["detail"]


@pytest.mark.parametrize("route", POST_ROUTES)
@pytest.mark.parametrize("raw", ["[]", '"text"', "42", "null"])
def test_json_that_is_not_an_object_is_400(unchanged, auth_client, route, raw):
    response = auth_client.post(route, data=raw, content_type="application/json")

    assert_problem(response, 400, fields={"(root)"})


@pytest.mark.parametrize("route", POST_ROUTES)
def test_wrong_types_are_400_naming_each_field(unchanged, auth_client, route):
    body, fields = WRONG_TYPES[route]

    assert_problem(auth_client.post(route, json=body), 400, fields=fields)


@pytest.mark.parametrize("route", POST_ROUTES)
def test_missing_fields_are_400_naming_each_field(unchanged, auth_client, route):
    body = assert_problem(auth_client.post(route, json={}), 400, fields=MISSING[route])

    assert {e["type"] for e in body["errors"]} == {"missing"}


@pytest.mark.parametrize("route", POST_ROUTES)
@pytest.mark.parametrize("extra", ["is_admin", "role"])
def test_unknown_fields_are_400_naming_the_field(unchanged, auth_client, route, extra):
    response = auth_client.post(route, json={**VALID_BODY[route], extra: True})

    assert_problem(response, 400, fields={extra})


@pytest.mark.parametrize(
    ("field", "value"),
    [("email", "a" * 310 + "@example.com"), ("email", "not-an-email"), ("full_name", "n" * 201)],
)
def test_register_field_limits_are_400(unchanged, auth_client, field, value):
    body = {**VALID_BODY["/register"], "email": "new@example.com", field: value}

    assert_problem(auth_client.post("/register", json=body), 400, fields={field})


@pytest.mark.parametrize("route", POST_ROUTES)
def test_body_over_the_limit_is_413(unchanged, auth_client, settings_env, route):
    settings_env(MAX_BODY_BYTES="1024")
    body = {**VALID_BODY[route], "padding": "p" * 2000}

    detail = assert_problem(auth_client.post(route, json=body), 413)["detail"]

    assert "1024" in detail


@pytest.mark.parametrize("route", POST_ROUTES)
@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", None]
)
def test_body_that_is_not_declared_json_is_415(unchanged, auth_client, route, content_type):
    headers = {"Content-Type": content_type} if content_type else {}

    response = auth_client.post(route, data='{"email": "a@example.com"}', headers=headers)

    assert "application/json" in assert_problem(response, 415)["detail"]


@pytest.mark.parametrize("path", ["/", "/nope", "/register/extra", "/v1/login", "/me/../admin"])
def test_unknown_route_is_404(unchanged, auth_client, path):
    assert_problem(auth_client.get(path), 404)


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/register", "POST"),
        ("PUT", "/login", "POST"),
        ("DELETE", "/refresh", "POST"),
        ("POST", "/me", "GET, HEAD"),
        ("PATCH", "/me", "GET, HEAD"),
    ],
)
def test_wrong_method_is_405_with_allow(unchanged, auth_client, method, path, allowed):
    response = auth_client.open(path, method=method, json={})

    body = assert_problem(response, 405)
    assert response.headers["Allow"] == allowed
    assert method in body["detail"]


# -- bad tokens on /me --------------------------------------------------------------------


def forged(key: str = BASE_ENV["JWT_SECRET"], **changes: Any) -> str:
    now = datetime.now(UTC)
    claims = {
        "sub": str(uuid.uuid4()),
        "typ": "access",
        "iss": "stratus",
        "aud": "stratus-api",
        "iat": now,
        "exp": now + timedelta(minutes=5),
        "jti": "j",
        **changes,
    }
    return jwt.encode(claims, key, algorithm="HS256")


def expired_token() -> str:
    past = datetime.now(UTC) - timedelta(hours=1)
    return forged(iat=past, exp=past + timedelta(minutes=15))


def tampered_token() -> str:
    head, _, signature = forged().split(".")
    _, body, _ = forged(sub=str(uuid.uuid4())).split(".")
    return f"{head}.{body}.{signature}"


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "missing Authorization"),
        ({"Authorization": "Basic YW5uOnB3"}, "malformed Authorization"),
        ({"Authorization": "Bearer"}, "malformed Authorization"),
        ({"Authorization": "Bearer    "}, "malformed Authorization"),
        ({"Authorization": "Bearer not.a.jwt"}, "invalid"),
        ({"Authorization": "Bearer " + "a" * 5000}, "invalid"),
    ],
)
def test_me_without_a_usable_authorization_header_is_401(unchanged, auth_client, headers, reason):
    response = auth_client.get("/me", headers=headers)

    assert reason in assert_problem(response, 401)["detail"]
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    ("make_token", "reason"),
    [
        (expired_token, "expired"),
        (tampered_token, "invalid"),
        (lambda: forged(key="wrong-key-" + "w" * 40), "invalid"),
        (lambda: forged(typ="refresh"), "access"),
        (lambda: forged(sub="admin"), "subject"),
        (lambda: forged(aud="other-api"), "invalid"),
        (lambda: create_password_reset_token(user_id=uuid.uuid4(), password_hash="h"), "access"),
        (lambda: create_email_verification_token(user_id=uuid.uuid4(), email="a@b.co"), "access"),
    ],
    ids=[
        "expired",
        "tampered",
        "wrong-key",
        "typ-refresh",
        "sub-not-uuid",
        "aud",
        "reset",
        "verify",
    ],
)
def test_me_with_a_bad_token_is_401(unchanged, auth_client, make_token, reason):
    response = auth_client.get("/me", headers=bearer(make_token()))

    assert reason in assert_problem(response, 401)["detail"]
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_me_with_a_refresh_token_as_bearer_is_401(db, auth_client):
    register(auth_client)
    refresh = login(auth_client).get_json()["refresh_token"]

    assert_problem(auth_client.get("/me", headers=bearer(refresh)), 401)


def test_me_for_a_user_that_no_longer_exists_is_401(db, auth_client):
    register(auth_client)
    access = login(auth_client).get_json()["access_token"]
    with session_scope() as session:
        session.execute(delete(User))

    response = auth_client.get("/me", headers=bearer(access))  # valid token, no such user

    assert "no longer exists" in assert_problem(response, 401)["detail"]


def test_a_token_that_names_no_session_is_401(unchanged, auth_client):
    response = auth_client.get("/me", headers=bearer(forged()))  # signed, but no `sid`

    assert "session" in assert_problem(response, 401)["detail"]


# -- concurrency ----------------------------------------------------------------------------


@pytest.mark.parametrize("round_", range(3))
def test_concurrent_duplicate_registration_gives_one_201_and_one_409(pg, client, round_):
    email = f"race-{round_}@example.com"
    barrier = threading.Barrier(2)
    statuses: list[int] = []

    def attempt() -> None:
        c = client("auth")
        barrier.wait()
        statuses.append(register(c, email=email).status_code)

    threads = [threading.Thread(target=attempt) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert sorted(statuses) == [201, 409]
    assert table_counts(pg)["users"] == 1


@contextmanager
def sqlite_writer_for(path: str, seconds: float) -> Iterator[None]:
    """Another connection holds SQLite's write lock (an open write transaction) for `seconds`
    from the start of the block, then commits."""
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    release = threading.Timer(seconds, other.execute, ("COMMIT",))
    release.start()
    try:
        yield
    finally:
        release.join()
        other.close()


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_on_sqlite_register_login_and_refresh_wait_for_another_writer(db, auth_client):
    """Each route waits its turn behind another connection's write transaction (a deferred
    transaction that had read would fail at once with "database is locked", a 500)."""
    register(auth_client)
    pair = login(auth_client).get_json()
    path = db.url.database
    before = table_counts(db)

    with sqlite_writer_for(path, 0.3):
        registered = register(auth_client, email="bob@example.com")
    with sqlite_writer_for(path, 0.3):
        logged_in = login(auth_client)
    with sqlite_writer_for(path, 0.3):
        refreshed = auth_client.post("/refresh", json={"refresh_token": pair["refresh_token"]})

    assert registered.status_code == 201, registered.get_data(as_text=True)
    assert logged_in.status_code == 200, logged_in.get_data(as_text=True)
    assert refreshed.status_code == 200, refreshed.get_data(as_text=True)
    after = table_counts(db)
    assert after["users"] == before["users"] + 1
    assert after["email_messages"] == before["email_messages"] + 1  # bob's welcome
    assert after["refresh_tokens"] == before["refresh_tokens"] + 2


# -- cold start -----------------------------------------------------------------------------


def test_registering_on_a_cold_instance_imports_no_llm_pubsub_stripe_alembic_or_jwt(tmp_path):
    """A cold start and a first registration (with its welcome email) load only what
    registering uses: no token is issued, so not even PyJWT (and the cryptography under it)."""
    url = migrated_sqlite(tmp_path)
    body = json.dumps({"email": "cold@example.com", "password": PASSWORD})

    cold = first_request_imports(
        "auth",
        method="POST",
        path="/register",
        headers={"Content-Type": "application/json"},
        body=body,
        env={"DATABASE_URL": url},
        cwd=tmp_path,
    )

    assert cold.status == 201, cold.body
    with closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as stored:  # the welcome went
        assert stored.execute("SELECT template FROM email_messages").fetchall() == [("welcome",)]
    heavy = (
        "openai",
        "google.cloud.pubsub",
        "google.cloud.secretmanager",
        "grpc",
        "stripe",
        "alembic",
        "jwt",
        "cryptography",
    )
    assert cold.loaded(heavy) == []


def test_auth_serves_register_login_refresh_and_me_without_importing_sqlalchemy(tmp_path):
    """On a cold instance every route, the welcome email and the metrics' write go through
    plain SQL: SQLAlchemy (and the models built on it) is never imported."""
    url = migrated_sqlite(tmp_path)
    credentials = {"email": "cold@example.com", "password": PASSWORD}
    served = serve_in_turn(
        "auth",
        [
            Step("POST", "/register", credentials),
            Step("POST", "/login", credentials, save={"refresh": "refresh_token"}),
            Step(
                "POST", "/refresh", {"refresh_token": "{refresh}"}, save={"access": "access_token"}
            ),
            Step("GET", "/me", headers={"Authorization": "Bearer {access}"}),
        ],
        env={"DATABASE_URL": url},
        cwd=tmp_path,
    )

    assert [status for status, _ in served.answers] == [201, 200, 200, 200], served.answers
    assert served.answers[3][1]["email"] == "cold@example.com"
    assert served.flushed == 4
    with closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as stored:
        assert stored.execute("SELECT template FROM email_messages").fetchall() == [("welcome",)]
        routes = stored.execute("SELECT route, status_code FROM api_call_metrics ORDER BY id")
        assert routes.fetchall() == [
            ("/register", 201),
            ("/login", 200),
            ("/refresh", 200),
            ("/me", 200),
        ]
    assert served.loaded(ORM) == []


# -- passwords as typed, normalised; hashes made before still verify --------------------------

NFC = "Ünïcödé-passphrase-2026"
FULL_WIDTH = "".join(chr(ord(c) + 0xFEE0) if c.isalnum() else c for c in "Full-width-pass-2026")


@pytest.mark.parametrize(
    ("registered", "typed", "status"),
    [
        ("  Correct horse battery staple  ", "  Correct horse battery staple  ", 200),
        ("  Correct horse battery staple  ", "Correct horse battery staple", 401),  # as typed
        (NFC, unicodedata.normalize("NFD", NFC), 200),  # one "ü" composed, the other not
        (FULL_WIDTH, "Full-width-pass-2026", 200),  # NFKC: each full-width letter is its ASCII
    ],
)
def test_passwords_are_taken_as_typed_and_normalised(db, auth_client, registered, typed, status):
    assert register(auth_client, password=registered).status_code == 201

    assert login(auth_client, password=typed).status_code == status


def _legacy_user(password_as_stored: str) -> None:
    """A user as registration stored them before passwords were normalised: bcrypt of the
    password stripped of surrounding whitespace, marked legacy by the migration."""
    with session_scope() as session:
        session.add(
            User(
                email="old@example.com",
                password_hash=bcrypt_hash(password_as_stored),
                password_legacy=True,
            )
        )


def bcrypt_hash(text: str) -> str:
    import bcrypt

    return bcrypt.hashpw(text.encode(), bcrypt.gensalt(4)).decode()


def stored_user(email: str = "old@example.com") -> User:
    with session_scope() as session:
        user = session.scalars(select(User).where(User.email == email)).one()
        session.expunge(user)
        return user


def test_a_legacy_hash_of_a_stripped_password_still_verifies_and_is_rehashed(db, auth_client):
    typed = "  legacy Pässwort with spaces  "
    _legacy_user(typed.strip())  # what the old API hashed
    before = stored_user().password_hash

    first = login(auth_client, email="old@example.com", password=typed)

    assert first.status_code == 200, first.get_data(as_text=True)
    upgraded = stored_user()
    assert not upgraded.password_legacy
    assert upgraded.password_hash != before
    assert verify_password(typed, upgraded.password_hash)  # now the typed, normalised form
    assert login(auth_client, email="old@example.com", password=typed).status_code == 200
    # the stripped form was only ever the legacy hash's: it is not the password any more
    assert login(auth_client, email="old@example.com", password=typed.strip()).status_code == 401


def test_a_legacy_hash_that_already_holds_the_typed_form_only_loses_its_mark(db, auth_client):
    _legacy_user("plain-legacy-password-1")
    before = stored_user().password_hash

    answer = login(auth_client, email="old@example.com", password="plain-legacy-password-1")

    assert answer.status_code == 200

    after = stored_user()
    assert (after.password_legacy, after.password_hash) == (False, before)


def test_the_legacy_check_costs_the_same_for_every_account(db, auth_client, monkeypatch):
    """A padded password costs two bcrypt checks whether the account is legacy, new, or
    unknown: the time of a failure says nothing about the account."""
    import bcrypt as bcrypt_module

    _legacy_user("old-password-value-1")
    register(auth_client, email="new@example.com")
    checks: list[bytes] = []
    real = bcrypt_module.checkpw
    monkeypatch.setattr(
        bcrypt_module, "checkpw", lambda pw, hashed: checks.append(pw) or real(pw, hashed)
    )
    counts = []
    for email in ("old@example.com", "new@example.com", "nobody@example.com"):
        checks.clear()
        assert login(auth_client, email=email, password=" wrong-but-padded ").status_code == 401
        counts.append(len(checks))
        checks.clear()
        assert login(auth_client, email=email, password="wrong-not-padded").status_code == 401
        counts.append(len(checks))

    assert counts == [2, 1, 2, 1, 2, 1]


@pytest.mark.parametrize("email", ["not-an-address", "ann@", "@example.com", "a" * 320])
def test_login_with_an_address_that_could_not_be_registered_is_an_ordinary_401(
    db, auth_client, email
):
    register(auth_client)

    unknown = assert_problem(login(auth_client, email="bob@example.com"), 401)
    invalid = assert_problem(login(auth_client, email=email), 401)

    assert invalid["detail"] == unknown["detail"]
