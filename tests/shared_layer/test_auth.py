"""Passwords, JWTs and refresh-token rotation (shared_layer.auth and services.accounts)."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import select, update

from shared_layer import auth
from shared_layer.config import get_settings
from shared_layer.database import session_scope
from shared_layer.errors import Conflict, InvalidInput, Unauthorized
from shared_layer.models import RefreshToken, User
from shared_layer.services import accounts
from shared_layer.services.users import UserRecord
from shared_layer.sql import transaction

SECRET = "test-secret-" + "x" * 40  # tests/conftest.py BASE_ENV
USER_ID = uuid.UUID("6f1c3d3e-8a0b-4c55-9d3e-2b1f0c9a7e11")
SESSION_ID = uuid.UUID("0c4d1f5e-2b7a-4e9c-8d3f-6a5b4c3d2e1f")
IP = "203.0.113.7"


def claims(**changes: Any) -> dict[str, Any]:
    """A complete, valid set of access-token claims, with `changes` (None removes a claim)."""
    now = datetime.now(UTC)
    base: dict[str, Any] = {
        "sub": str(USER_ID),
        "typ": "access",
        "iss": "stratus",
        "aud": "stratus-api",
        "iat": now,
        "exp": now + timedelta(minutes=5),
        "jti": "jti-1",
        "sid": str(SESSION_ID),
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def sign(payload: dict[str, Any], key: Any = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(payload, key, algorithm=algorithm)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def register(email: str = "ann@example.com", password: str = "s3cret-pass") -> UserRecord:
    with transaction() as db:
        return accounts.register_user(db, email=email, password_hash=auth.hash_password(password))


def login_tokens(user: UserRecord) -> tuple[str, str]:
    with transaction() as db:
        pair = accounts.start_session(db, user=user, user_agent="pytest", ip_address="127.0.0.1")
    return pair.access_token, pair.refresh_token


def access_token(**claims: Any) -> str:
    return auth.create_access_token(user_id=USER_ID, session_id=SESSION_ID, **claims)


def rotate(refresh_token: str) -> tuple[str, str]:
    pair = accounts.rotate_refresh_token(refresh_token=refresh_token)  # owns its transaction
    return pair.access_token, pair.refresh_token


def stored_tokens(user_id: uuid.UUID) -> list[RefreshToken]:
    with session_scope() as session:
        return list(session.scalars(select(RefreshToken).where(RefreshToken.user_id == user_id)))


# -- passwords --------------------------------------------------------------------------------


def test_hash_password_is_salted_bcrypt_with_configured_rounds():
    first, second = auth.hash_password("s3cret-pass"), auth.hash_password("s3cret-pass")

    assert first.startswith("$2b$04$")  # BCRYPT_ROUNDS=4 in tests
    assert first != second
    assert auth.verify_password("s3cret-pass", first)
    assert auth.verify_password("s3cret-pass", second)


def test_verify_password_rejects_a_wrong_password():
    hashed = auth.hash_password("s3cret-pass")

    assert not auth.verify_password("s3cret-pasS", hashed)
    assert not auth.verify_password("", hashed)


@pytest.mark.parametrize("password", ["a" * 73, "é" * 37])  # 73 and 74 bytes
def test_hash_password_refuses_more_than_72_bytes(password):
    with pytest.raises(InvalidInput, match="72 bytes"):
        auth.hash_password(password)


def test_verify_password_does_not_truncate_at_72_bytes():
    hashed = auth.hash_password("a" * 72)

    assert auth.verify_password("a" * 72, hashed)
    assert not auth.verify_password("a" * 72 + "tail", hashed)


def test_verify_password_against_a_malformed_hash_is_false_not_a_crash():
    assert not auth.verify_password("s3cret-pass", "not-a-bcrypt-hash")


def test_burn_password_check_spends_a_real_bcrypt_check():
    auth.burn_password_check("whatever-1")  # must not raise, with or without a cached dummy

    assert get_settings().bcrypt_rounds in auth._dummy_hashes


# -- access tokens ------------------------------------------------------------------------


def test_access_token_carries_every_required_claim():
    token = access_token(email="ann@example.com")

    decoded = jwt.decode(token, options={"verify_signature": False})
    header = jwt.get_unverified_header(token)

    assert header["alg"] == "HS256"
    assert set(auth.REQUIRED_CLAIMS) <= set(decoded)
    assert decoded["sub"] == str(USER_ID)
    assert decoded["typ"] == "access"
    assert decoded["iss"] == "stratus"
    assert decoded["aud"] == "stratus-api"
    assert decoded["exp"] - decoded["iat"] == get_settings().access_token_ttl_seconds
    assert decoded["email"] == "ann@example.com"
    assert decoded["sid"] == str(SESSION_ID)


def test_every_token_has_its_own_jti():
    first = jwt.decode(access_token(), options={"verify_signature": False})
    second = jwt.decode(access_token(), options={"verify_signature": False})

    assert first["jti"] != second["jti"]


def test_verify_token_returns_the_payload():
    payload = auth.verify_token(access_token(email="ann@example.com"))

    assert payload.user_id == USER_ID
    assert payload.session_id == SESSION_ID
    assert payload.email == "ann@example.com"
    assert payload.token_type == "access"
    assert not payload.is_expired
    assert payload.expires_at.tzinfo is UTC
    assert auth.get_user_id_from_token(access_token()) == USER_ID


def test_handcrafted_valid_token_verifies():
    # Guards the negative tests below: their only defect is the one each introduces.
    assert auth.verify_token(sign(claims())).user_id == USER_ID


def test_expired_token_is_refused():
    past = datetime.now(UTC) - timedelta(minutes=10)
    token = sign(claims(iat=past, exp=past + timedelta(minutes=1)))

    with pytest.raises(Unauthorized, match="expired"):
        auth.verify_token(token)


def test_token_issued_in_the_future_is_refused():
    future = datetime.now(UTC) + timedelta(hours=1)

    with pytest.raises(Unauthorized):
        auth.verify_token(sign(claims(iat=future, exp=future + timedelta(minutes=5))))


def test_tampered_signature_is_refused():
    token = access_token()
    head, body, signature = token.split(".")
    flipped = signature[:-2] + ("AA" if signature[-2:] != "AA" else "BB")

    with pytest.raises(Unauthorized, match="invalid"):
        auth.verify_token(f"{head}.{body}.{flipped}")


def test_tampered_payload_is_refused():
    token = access_token()
    head, _, signature = token.split(".")
    other = b64(json.dumps(claims(sub=str(uuid.uuid4())), default=str).encode())

    with pytest.raises(Unauthorized):
        auth.verify_token(f"{head}.{other}.{signature}")


def test_token_signed_with_another_secret_is_refused():
    with pytest.raises(Unauthorized, match="invalid"):
        auth.verify_token(sign(claims(), key="another-secret-" + "y" * 40))


def test_unsigned_alg_none_token_is_refused():
    now = int(datetime.now(UTC).timestamp())
    body = claims(iat=now, exp=now + 300)
    header = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    token = f"{header}.{b64(json.dumps(body).encode())}."

    with pytest.raises(Unauthorized):
        auth.verify_token(token)


def test_hs512_token_is_refused_when_hs256_is_configured(settings_env):
    key = "k" * 64  # long enough for HS512, so only the algorithm is wrong
    settings_env(JWT_SECRET=key)

    with pytest.raises(Unauthorized):
        auth.verify_token(sign(claims(), key=key, algorithm="HS512"))


def test_rs256_token_is_refused_when_hs256_is_configured():
    private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    with pytest.raises(Unauthorized):
        auth.verify_token(sign(claims(), key=private_key, algorithm="RS256"))


def test_configured_hs512_is_used_and_hs256_then_refused(settings_env):
    settings_env(JWT_ALGORITHM="HS512", JWT_SECRET="hs512-" + "z" * 64)

    token = access_token()

    assert jwt.get_unverified_header(token)["alg"] == "HS512"
    assert auth.verify_token(token).user_id == USER_ID
    with pytest.raises(Unauthorized):
        auth.verify_token(sign(claims(), key="hs512-" + "z" * 64, algorithm="HS256"))


@pytest.mark.parametrize("missing", auth.REQUIRED_CLAIMS)
def test_token_missing_a_required_claim_is_refused(missing):
    with pytest.raises(Unauthorized, match=missing):
        auth.verify_token(sign(claims(**{missing: None})))


@pytest.mark.parametrize(("claim", "value"), [("aud", "someone-else"), ("iss", "evil-issuer")])
def test_token_for_another_audience_or_from_another_issuer_is_refused(claim, value):
    with pytest.raises(Unauthorized):
        auth.verify_token(sign(claims(**{claim: value})))


@pytest.mark.parametrize("subject", ["42", "admin", "not-a-uuid-at-all"])
def test_token_whose_subject_is_not_a_uuid_is_refused(subject):
    with pytest.raises(Unauthorized, match="subject"):
        auth.verify_token(sign(claims(sub=subject)))


def test_password_reset_token_is_refused_as_access_token():
    token = auth.create_password_reset_token(user_id=USER_ID, password_hash="$2b$04$hash")

    with pytest.raises(Unauthorized, match="access"):
        auth.verify_token(token)


def test_access_token_is_refused_where_another_type_is_expected():
    token = access_token()

    for expected in ("password_reset", "email_verification"):
        with pytest.raises(Unauthorized, match=expected):
            auth.verify_token(token, expected_type=expected)


# -- password-reset and email-verification tokens -------------------------------------------


def test_password_reset_token_verifies_for_one_hour_against_the_current_password():
    current = auth.hash_password("s3cret-pass")
    token = auth.create_password_reset_token(user_id=USER_ID, password_hash=current)

    payload = auth.verify_token(token, expected_type="password_reset")

    assert payload.user_id == USER_ID
    assert payload.expires_at - payload.issued_at == timedelta(hours=1)
    assert payload.matches_password(current)


def test_password_reset_token_stops_matching_once_the_password_changed():
    token = auth.create_password_reset_token(
        user_id=USER_ID, password_hash=auth.hash_password("s3cret-pass")
    )
    payload = auth.verify_token(token, expected_type="password_reset")

    assert not payload.matches_password(auth.hash_password("n3w-password"))


def test_email_verification_token_carries_the_email_for_two_days():
    token = auth.create_email_verification_token(user_id=USER_ID, email="ann@example.com")

    payload = auth.verify_token(token, expected_type="email_verification")

    assert payload.email == "ann@example.com"
    assert payload.expires_at - payload.issued_at == timedelta(days=2)
    with pytest.raises(Unauthorized):
        auth.verify_token(token)  # not an access token


def test_expired_password_reset_token_is_refused():
    past = datetime.now(UTC) - timedelta(hours=2)
    token = sign(claims(typ="password_reset", iat=past, exp=past + timedelta(hours=1)))

    with pytest.raises(Unauthorized, match="expired"):
        auth.verify_token(token, expected_type="password_reset")


# -- refresh tokens ---------------------------------------------------------------------------


def test_new_refresh_token_is_random_and_stored_only_as_its_sha256():
    token, digest = auth.new_refresh_token()
    other, _ = auth.new_refresh_token()

    assert token.startswith("rt_")
    assert token != other
    assert digest == hashlib.sha256(token.encode()).hexdigest() == auth.hash_refresh_token(token)


def test_issued_refresh_token_is_stored_hashed_never_in_clear(db):
    user = register()
    _, refresh = login_tokens(user)

    [row] = stored_tokens(user.id)

    assert row.token_hash == auth.hash_refresh_token(refresh)
    assert refresh not in {row.token_hash, str(row.id), str(row.session_id)}
    assert row.revoked_at is None
    assert row.expires_at > datetime.now(UTC) + timedelta(days=29)


def test_rotation_gives_a_new_pair_and_the_old_token_stops_working(db):
    user = register()
    _, first = login_tokens(user)

    access, second = rotate(first)

    assert second != first
    assert auth.verify_token(access).user_id == user.id
    with pytest.raises(Unauthorized, match="already used"):
        rotate(first)


def test_rotated_tokens_share_one_session(db):
    user = register()
    _, first = login_tokens(user)
    _, second = rotate(first)
    rotate(second)

    rows = stored_tokens(user.id)

    assert len(rows) == 3
    assert len({row.session_id for row in rows}) == 1


def test_reuse_of_a_rotated_token_ends_the_session_and_it_persists(db):
    user = register()
    _, first = login_tokens(user)
    _, second = rotate(first)

    with pytest.raises(Unauthorized):
        rotate(first)  # a thief (or a replay) presents the rotated token

    # The request failed and its scope rolled back, yet the revocation stayed committed.
    assert all(row.revoked_at is not None for row in stored_tokens(user.id))
    with pytest.raises(Unauthorized):
        rotate(second)  # so the legitimate holder's newest token is dead too


def test_reuse_in_one_family_leaves_other_sessions_alone(db):
    user = register()
    _, phone = login_tokens(user)
    _, laptop = login_tokens(user)
    rotate(phone)

    with pytest.raises(Unauthorized):
        rotate(phone)

    _, laptop_next = rotate(laptop)
    assert laptop_next


def test_expired_refresh_token_is_refused(db):
    user = register()
    _, refresh = login_tokens(user)
    with session_scope() as session:
        session.execute(
            update(RefreshToken).values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )

    with pytest.raises(Unauthorized, match="expired"):
        rotate(refresh)


def test_unknown_refresh_token_is_refused(db):
    with pytest.raises(Unauthorized, match="unknown"):
        rotate("rt_" + "x" * 43)


def test_refresh_token_of_a_disabled_user_is_refused_and_not_consumed(db):
    user = register()
    _, refresh = login_tokens(user)
    with session_scope() as session:
        session.execute(update(User).values(is_active=False))

    with pytest.raises(Unauthorized, match="disabled"):
        rotate(refresh)

    assert all(row.revoked_at is None for row in stored_tokens(user.id))


def test_concurrent_use_of_one_refresh_token_has_exactly_one_winner(pg):
    user = register()
    _, refresh = login_tokens(user)
    contenders = 4
    barrier = threading.Barrier(contenders)
    won: list[str] = []
    refused: list[str] = []

    def use() -> None:
        barrier.wait()
        try:
            won.append(rotate(refresh)[1])
        except Unauthorized as exc:
            refused.append(exc.detail)

    threads = [threading.Thread(target=use) for _ in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert len(won) == 1
    assert len(refused) == contenders - 1
    # The losers presented an already-used token: reuse, so the family (the winner's new
    # token included) is revoked. A client racing itself signs in again.
    with pytest.raises(Unauthorized):
        rotate(won[0])


# -- registration and login (service level) ---------------------------------------------


def test_register_normalises_email_and_stores_only_a_hash(db):
    user = register(email="Ann@Example.COM")

    assert user.email == "ann@example.com"
    assert user.password_hash != "s3cret-pass"
    assert auth.verify_password("s3cret-pass", user.password_hash)


def test_register_twice_is_a_conflict(db):
    register()

    with pytest.raises(Conflict):
        register(email="ANN@example.com")


def test_concurrent_registration_waits_for_the_first_then_is_a_conflict(db):
    """The second registration starts while the first's row is uncommitted: it waits for the
    first (PostgreSQL: on the unique index; SQLite: for the write lock), then inserts nothing."""
    first_inserted, first_may_commit = threading.Event(), threading.Event()
    outcome: dict[str, Any] = {}
    race_hash = auth.hash_password("s3cret-pass")

    def first() -> None:
        with transaction() as db:
            accounts.register_user(db, email="race@example.com", password_hash=race_hash)
            first_inserted.set()
            first_may_commit.wait(timeout=10)
        outcome["first"] = "committed"

    def second() -> None:
        first_inserted.wait(timeout=10)
        threading.Timer(0.3, first_may_commit.set).start()  # by then the second is waiting
        try:
            with transaction() as db:
                accounts.register_user(db, email="race@example.com", password_hash=race_hash)
        except Conflict as exc:
            outcome["error"] = exc

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert outcome["first"] == "committed"
    assert "already exists" in outcome["error"].detail
    with session_scope() as session:
        assert session.scalars(select(User.email)).all() == ["race@example.com"]


def test_authenticate_with_wrong_password_or_unknown_email_is_the_same_error(db):
    register()

    with pytest.raises(Unauthorized) as wrong_password:
        accounts.authenticate_user(email="ann@example.com", password="nope-nope-1", client_ip=IP)
    with pytest.raises(Unauthorized) as unknown_email:
        accounts.authenticate_user(email="bob@example.com", password="nope-nope-1", client_ip=IP)

    assert wrong_password.value.detail == unknown_email.value.detail
