"""Who is an administrator: the `users.is_admin` flag, granted by an operator (`stratus admin`).

There is no HTTP route that grants it: an operator with database access runs
`stratus admin grant EMAIL`, so no request can make itself an admin.
"""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared_layer.errors import Forbidden, NotFound
from shared_layer.logging_config import log_security_event
from shared_layer.models import User
from shared_layer.services.users import normalize_email


def require_admin(session: Session, *, user_id: uuid.UUID, action: str) -> User:
    """The user, if an active administrator; else `Forbidden` (and a security event)."""
    user = session.get(User, user_id)
    if user is None or not user.is_active or not user.is_admin:
        log_security_event("admin_access_denied", user_id=str(user_id), action=action)
        raise Forbidden(f"{action} is for administrators only")
    return user


def set_admin(session: Session, *, email: str, admin: bool) -> User:
    """Grant or revoke the flag; `NotFound` when no account has the email."""
    user = session.scalar(select(User).where(User.email == normalize_email(email)))
    if user is None:
        raise NotFound(f"no account with email {normalize_email(email)}")
    if user.is_admin != admin:
        user.is_admin = admin
        session.flush()
        log_security_event(
            "admin_granted" if admin else "admin_revoked", user_id=str(user.id), email=user.email
        )
    return user


def list_admins(session: Session) -> list[User]:
    return list(session.scalars(select(User).where(User.is_admin.is_(True)).order_by(User.email)))
