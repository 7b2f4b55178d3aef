"""Registration, login and token issuance."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared_layer import auth
from shared_layer.config import get_settings
from shared_layer.errors import Conflict, Unauthorized
from shared_layer.logging_config import log_security_event
from shared_layer.models import RefreshToken, User
from shared_layer.schemas.accounts import TokenPair


def normalize_email(email: str) -> str:
    return email.strip().lower()


def register_user(
    session: Session, *, email: str, password: str, full_name: str | None = None
) -> User:
    email = normalize_email(email)
    if session.scalar(select(User.id).where(User.email == email)) is not None:
        raise Conflict(f"an account with email {email} already exists")
    user = User(email=email, password_hash=auth.hash_password(password), full_name=full_name)
    session.add(user)
    try:
        session.flush()
    except IntegrityError as exc:  # a concurrent registration won the race
        raise Conflict(f"an account with email {email} already exists") from exc
    return user


def authenticate_user(session: Session, *, email: str, password: str) -> User:
    user = session.scalar(select(User).where(User.email == normalize_email(email)))
    if user is None:
        auth.burn_password_check(password)  # same time whether or not the email exists
    elif auth.verify_password(password, user.password_hash) and user.is_active:
        return user
    log_security_event("login_failed", email_domain=email.rpartition("@")[2])
    raise Unauthorized("incorrect email or password")


def get_active_user(session: Session, *, user_id: uuid.UUID) -> User:
    user = session.get(User, user_id)
    if user is None or not user.is_active:
        raise Unauthorized("the token's user no longer exists or is disabled")
    return user


def issue_tokens(session: Session, *, user: User, family_id: uuid.UUID | None = None) -> TokenPair:
    """An access token and a new refresh token (in `family_id`'s rotation chain, or a new one)."""
    settings = get_settings()
    token, token_hash = auth.new_refresh_token()
    session.add(
        RefreshToken(
            user_id=user.id,
            token_hash=token_hash,
            family_id=family_id or uuid.uuid4(),
            expires_at=datetime.now(UTC) + timedelta(days=settings.refresh_token_ttl_days),
        )
    )
    session.flush()
    return TokenPair(
        access_token=auth.create_access_token(user_id=user.id, email=user.email),
        refresh_token=token,
        expires_in=settings.access_token_ttl_seconds,
    )


def rotate_refresh_token(session: Session, *, refresh_token: str) -> TokenPair:
    """Trade a refresh token for a new pair; a reused (already rotated) token revokes its family.

    The claim is a conditional UPDATE, so two concurrent uses of one token cannot both win; the
    loser counts as a reuse too (a thief racing the owner looks the same), so the family goes.
    Revoking is the one write a failed request keeps: it is committed before the raise.
    """
    now = datetime.now(UTC)
    token_hash = auth.hash_refresh_token(refresh_token)
    stored = session.scalar(select(RefreshToken).where(RefreshToken.token_hash == token_hash))
    if stored is None:
        raise Unauthorized("unknown refresh token")
    if stored.expires_at <= now:
        raise Unauthorized("the refresh token has expired")
    claimed = session.scalar(
        update(RefreshToken)
        .where(RefreshToken.id == stored.id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=now)
        .returning(RefreshToken.id)
    )
    if claimed is None:
        _revoke_family(session, family_id=stored.family_id, now=now)
        # The revocation must outlive this failed request, whose scope rolls back on the raise.
        session.commit()
        log_security_event("refresh_token_reuse", user_id=str(stored.user_id))
        raise Unauthorized("the refresh token was already used; sign in again")
    user = get_active_user(session, user_id=stored.user_id)
    return issue_tokens(session, user=user, family_id=stored.family_id)


def _revoke_family(session: Session, *, family_id: uuid.UUID, now: datetime) -> None:
    session.execute(
        update(RefreshToken)
        .where(RefreshToken.family_id == family_id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=now)
    )
