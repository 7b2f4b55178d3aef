"""Registration, sign-in, sessions and token issuance, in plain SQL (`shared_layer.sql`): the
auth function's request path imports no SQLAlchemy.

The races are settled by the database: a duplicate registration by the unique index on
`users.email` (INSERT ... ON CONFLICT DO NOTHING), two uses of one refresh token by a
conditional UPDATE. Each writing transaction also begins with its write, so that on PostgreSQL
the loser waits on the winner's row and then sees its outcome.

Sign-in is throttled (`shared_layer.throttle`) per pair of account and client IP, per IP and
per account, before any password is checked, and the password check costs the same for every
account, known or not.
"""

from __future__ import annotations

import ipaddress
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from shared_layer import auth
from shared_layer.config import Settings, get_settings
from shared_layer.errors import Conflict, RateLimited, Unauthorized
from shared_layer.logging_config import log_security_event
from shared_layer.schemas.accounts import TokenPair
from shared_layer.services.sessions import open_session, revoke_session
from shared_layer.services.users import (
    USER_COLUMNS,
    UserRecord,
    get_active_user,
    normalize_email,
    user_from_row,
)
from shared_layer.sql import Db, as_datetime, as_uuid, transaction
from shared_layer.throttle import Key, Limit, get_throttle

__all__ = [
    "authenticate_user",
    "get_active_user",
    "issue_tokens",
    "login_limits",
    "logout",
    "normalize_email",
    "register_user",
    "rotate_refresh_token",
    "start_session",
]


def register_user(
    db: Db, *, email: str, password_hash: str, full_name: str | None = None
) -> UserRecord:
    """A new active user; `Conflict` when the email is taken, also by a concurrent registration
    (the unique index decides: the loser's INSERT waits for the winner, then inserts nothing).

    The caller hashes the password (`auth.hash_password`) before opening the transaction, so
    no lock is held while bcrypt runs."""
    email = normalize_email(email)
    now = datetime.now(UTC)
    row = db.one(
        f"INSERT INTO users (id, email, password_hash, full_name, is_active, is_admin,"  # noqa: S608
        f" password_legacy, created_at, updated_at)"
        f" VALUES (:id, :email, :password_hash, :full_name, :active, :admin, :legacy, :now, :now)"
        f" ON CONFLICT (email) DO NOTHING RETURNING {USER_COLUMNS}",
        {
            "id": uuid.uuid4(),
            "email": email,
            "password_hash": password_hash,
            "full_name": full_name,
            "active": True,
            "admin": False,
            "legacy": False,
            "now": now,
        },
    )
    if row is None:
        raise Conflict(f"an account with email {email} already exists")
    return user_from_row(row)


def login_limits(settings: Settings) -> tuple[Limit, Limit, Limit]:
    """The sign-in limits: (account and IP, IP, account).

    The pair stops one guesser quickly; the IP limit, higher because many people can share an
    address, stops one address spraying many accounts; the account limit stops a guesser spread
    over many addresses. Its wait is short (`LOGIN_THROTTLE_ACCOUNT_MAX_DELAY_SECONDS`), so a
    stranger's guesses can delay the owner's own sign-in by that much at most, never lock it."""
    cap = settings.login_throttle_max_delay_seconds
    return (
        Limit("login-account-ip", settings.login_throttle_account_ip_failures, cap),
        Limit("login-ip", settings.login_throttle_ip_failures, cap),
        Limit(
            "login-account",
            settings.login_throttle_account_failures,
            settings.login_throttle_account_max_delay_seconds,
        ),
    )


def _ip_subject(client_ip: str) -> str:
    """What the IP limits count by: the address, or for IPv6 its /64 (one subscriber's)."""
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        return client_ip
    if address.version == 6:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


def authenticate_user(*, email: str, password: str, client_ip: str) -> UserRecord:
    """The active user with this email and password, else 401 (the same one either way); 429
    with Retry-After while the sign-in limits make the caller wait (no password is checked).

    Reads in a transaction of its own and checks the password after it ends: bcrypt's quarter
    second holds no connection or lock (on SQLite, every transaction of `sql` holds the lock)."""
    address = normalize_email(email)
    pair, per_ip, account = login_limits(get_settings())
    ip = _ip_subject(client_ip)
    try:
        attempt = get_throttle().attempt(
            Key(pair, f"{address} {ip}"),
            Key(per_ip, ip),
            Key(account, address),
            what="failed sign-ins",
        )
    except RateLimited:
        log_security_event("login_throttled", email_domain=address.rpartition("@")[2], ip=ip)
        raise
    with transaction() as db:
        row = db.one(
            f"SELECT {USER_COLUMNS} FROM users WHERE email = :email",  # noqa: S608
            {"email": address},
        )
    user = None if row is None else user_from_row(row)
    matched = _check_password(password, user)
    if user is not None and matched is not None and user.is_active:
        attempt.succeeded(forget=(pair, account))
        if user.password_legacy:
            _upgrade_legacy_hash(user, password, rehash=matched == "legacy")
        return user
    log_security_event("login_failed", email_domain=address.rpartition("@")[2], ip=ip)
    raise Unauthorized("incorrect email or password")


def _check_password(password: str, user: UserRecord | None) -> Literal["current", "legacy"] | None:
    """Which form of `password` the user's hash holds, if any. The bcrypt work depends on the
    password alone, never on the account: one check, and one more whenever the password's
    legacy form differs, made against a dummy hash where there is no legacy hash to check."""
    if auth.verify_password(password, user.password_hash if user else auth.dummy_hash()):
        return "current"
    if auth.legacy_form_differs(password):
        legacy = user is not None and user.password_legacy
        hashed = user.password_hash if user is not None and legacy else auth.dummy_hash()
        if auth.verify_legacy_password(password, hashed) and legacy:
            return "legacy"
    return None


def _upgrade_legacy_hash(user: UserRecord, password: str, *, rehash: bool) -> None:
    """After a sign-in with a legacy hash: store the normalised password's hash (or, when the
    hash already holds that form, only drop the mark). Guarded by the old hash, so a password
    changed meanwhile is never overwritten."""
    new_hash = auth.hash_password(password) if rehash else user.password_hash
    with transaction() as db:
        db.execute(
            "UPDATE users SET password_hash = :new, password_legacy = :legacy, updated_at = :now"
            " WHERE id = :id AND password_hash = :old",
            {
                "new": new_hash,
                "legacy": False,
                "now": datetime.now(UTC),
                "id": user.id,
                "old": user.password_hash,
            },
        )


def start_session(
    db: Db, *, user: UserRecord, user_agent: str | None, ip_address: str | None
) -> TokenPair:
    """A new session for a user who just signed in, and its first token pair."""
    session_id = open_session(db, user_id=user.id, user_agent=user_agent, ip_address=ip_address)
    return issue_tokens(db, user=user, session_id=session_id)


def issue_tokens(db: Db, *, user: UserRecord, session_id: uuid.UUID) -> TokenPair:
    """An access token and a new refresh token in the session `session_id`."""
    settings = get_settings()
    token, token_hash = auth.new_refresh_token()
    now = datetime.now(UTC)
    db.insert(
        "refresh_tokens",
        {
            "id": uuid.uuid4(),
            "user_id": user.id,
            "token_hash": token_hash,
            "session_id": session_id,
            "created_at": now,
            "expires_at": now + timedelta(days=settings.refresh_token_ttl_days),
        },
    )
    return TokenPair(
        access_token=auth.create_access_token(
            user_id=user.id, session_id=session_id, email=user.email
        ),
        refresh_token=token,
        expires_in=settings.access_token_ttl_seconds,
    )


def logout(*, user_id: uuid.UUID, session_id: uuid.UUID) -> None:
    """End the caller's session: its refresh tokens and access tokens stop working."""
    with transaction() as db:
        if revoke_session(db, session_id=session_id, reason="logout"):
            log_security_event("logout", user_id=str(user_id), session_id=str(session_id))


@dataclass(frozen=True)
class _Reuse:
    user_id: uuid.UUID
    session_id: uuid.UUID


def rotate_refresh_token(*, refresh_token: str) -> TokenPair:
    """Trade a refresh token for a new pair; a reused (already rotated) token ends its session.

    The one service that owns its transaction: a reuse must end the session *and* fail the
    request, so the revocation is committed when the transaction ends and the refusal raised
    after it. The claim is a conditional UPDATE, so two concurrent uses of one token cannot both
    win; the loser counts as a reuse too (a thief racing the owner looks the same), and its
    revocation, made after the winner committed, takes the winner's new token with it.
    """
    now = datetime.now(UTC)
    token_hash = auth.hash_refresh_token(refresh_token)
    with transaction() as db:
        outcome = _rotate(db, token_hash=token_hash, now=now)
    if isinstance(outcome, TokenPair):
        return outcome
    log_security_event(
        "refresh_token_reuse", user_id=str(outcome.user_id), session_id=str(outcome.session_id)
    )
    raise Unauthorized("the refresh token was already used; sign in again")


def _rotate(db: Db, *, token_hash: str, now: datetime) -> TokenPair | _Reuse:
    claimed = db.one(
        "UPDATE refresh_tokens SET revoked_at = :now"
        " WHERE token_hash = :hash AND revoked_at IS NULL AND expires_at > :now"
        " RETURNING user_id, session_id",
        {"hash": token_hash, "now": now},
    )
    if claimed is not None:
        # A disabled user raises here: the transaction rolls back and the token stays unused.
        user = get_active_user(db, user_id=as_uuid(claimed["user_id"]))
        session_id = as_uuid(claimed["session_id"])
        db.execute(
            "UPDATE auth_sessions SET last_used_at = :now WHERE id = :id",
            {"id": session_id, "now": now},
        )
        return issue_tokens(db, user=user, session_id=session_id)
    stored = db.one(
        "SELECT user_id, session_id, expires_at FROM refresh_tokens WHERE token_hash = :hash",
        {"hash": token_hash},
    )
    if stored is None:
        raise Unauthorized("unknown refresh token")
    if as_datetime(stored["expires_at"]) <= now:
        raise Unauthorized("the refresh token has expired")
    session_id = as_uuid(stored["session_id"])
    revoke_session(db, session_id=session_id, reason="refresh_reuse")
    return _Reuse(user_id=as_uuid(stored["user_id"]), session_id=session_id)
