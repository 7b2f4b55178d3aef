"""Registration, login and token issuance, in plain SQL (`shared_layer.sql`): the auth
function's request path imports no SQLAlchemy.

The races are settled by the database, as they were under the ORM: a duplicate registration by
the unique index on `users.email` (INSERT ... ON CONFLICT DO NOTHING), two uses of one refresh
token by a conditional UPDATE. Each writing transaction also begins with its write, so that on
PostgreSQL the loser waits on the winner's row and then sees its outcome.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from shared_layer import auth
from shared_layer.config import get_settings
from shared_layer.errors import Conflict, Unauthorized
from shared_layer.logging_config import log_security_event
from shared_layer.schemas.accounts import TokenPair
from shared_layer.services.users import (
    USER_COLUMNS,
    UserRecord,
    get_active_user,
    user_from_row,
)
from shared_layer.sql import Db, as_datetime, as_uuid, transaction

__all__ = [
    "authenticate_user",
    "get_active_user",
    "issue_tokens",
    "normalize_email",
    "register_user",
    "rotate_refresh_token",
]


def normalize_email(email: str) -> str:
    return email.strip().lower()


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
        f" created_at, updated_at)"
        f" VALUES (:id, :email, :password_hash, :full_name, :active, :admin, :now, :now)"
        f" ON CONFLICT (email) DO NOTHING RETURNING {USER_COLUMNS}",
        {
            "id": uuid.uuid4(),
            "email": email,
            "password_hash": password_hash,
            "full_name": full_name,
            "active": True,
            "admin": False,
            "now": now,
        },
    )
    if row is None:
        raise Conflict(f"an account with email {email} already exists")
    return user_from_row(row)


def authenticate_user(*, email: str, password: str) -> UserRecord:
    """The active user with this email and password, else 401 (the same one either way).

    Reads in a transaction of its own and checks the password after it ends: bcrypt's quarter
    second holds no connection or lock (on SQLite, every transaction of `sql` holds the lock)."""
    with transaction() as db:
        row = db.one(
            f"SELECT {USER_COLUMNS} FROM users WHERE email = :email",  # noqa: S608
            {"email": normalize_email(email)},
        )
    if row is None:
        auth.burn_password_check(password)  # same time whether or not the email exists
    elif auth.verify_password(password, row["password_hash"]) and row["is_active"]:
        return user_from_row(row)
    log_security_event("login_failed", email_domain=email.rpartition("@")[2])
    raise Unauthorized("incorrect email or password")


def issue_tokens(db: Db, *, user: UserRecord, family_id: uuid.UUID | None = None) -> TokenPair:
    """An access token and a new refresh token (in `family_id`'s rotation chain, or a new one)."""
    settings = get_settings()
    token, token_hash = auth.new_refresh_token()
    now = datetime.now(UTC)
    db.insert(
        "refresh_tokens",
        {
            "id": uuid.uuid4(),
            "user_id": user.id,
            "token_hash": token_hash,
            "family_id": family_id or uuid.uuid4(),
            "created_at": now,
            "expires_at": now + timedelta(days=settings.refresh_token_ttl_days),
        },
    )
    return TokenPair(
        access_token=auth.create_access_token(user_id=user.id, email=user.email),
        refresh_token=token,
        expires_in=settings.access_token_ttl_seconds,
    )


@dataclass(frozen=True)
class _Reuse:
    user_id: uuid.UUID
    family_id: uuid.UUID


def rotate_refresh_token(*, refresh_token: str) -> TokenPair:
    """Trade a refresh token for a new pair; a reused (already rotated) token revokes its family.

    The one service that owns its transaction: a reuse must revoke the family *and* fail the
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
    log_security_event("refresh_token_reuse", user_id=str(outcome.user_id))
    raise Unauthorized("the refresh token was already used; sign in again")


def _rotate(db: Db, *, token_hash: str, now: datetime) -> TokenPair | _Reuse:
    claimed = db.one(
        "UPDATE refresh_tokens SET revoked_at = :now"
        " WHERE token_hash = :hash AND revoked_at IS NULL AND expires_at > :now"
        " RETURNING user_id, family_id",
        {"hash": token_hash, "now": now},
    )
    if claimed is not None:
        # A disabled user raises here: the transaction rolls back and the token stays unused.
        user = get_active_user(db, user_id=as_uuid(claimed["user_id"]))
        return issue_tokens(db, user=user, family_id=as_uuid(claimed["family_id"]))
    stored = db.one(
        "SELECT user_id, family_id, expires_at FROM refresh_tokens WHERE token_hash = :hash",
        {"hash": token_hash},
    )
    if stored is None:
        raise Unauthorized("unknown refresh token")
    if as_datetime(stored["expires_at"]) <= now:
        raise Unauthorized("the refresh token has expired")
    family_id = as_uuid(stored["family_id"])
    db.execute(
        "UPDATE refresh_tokens SET revoked_at = :now"
        " WHERE family_id = :family AND revoked_at IS NULL",
        {"family": family_id, "now": now},
    )
    return _Reuse(user_id=as_uuid(stored["user_id"]), family_id=family_id)
