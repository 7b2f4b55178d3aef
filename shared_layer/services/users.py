"""Users as the request paths read them: a typed record from plain SQL (`shared_layer.sql`)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared_layer.errors import Unauthorized
from shared_layer.sql import Db, as_datetime, as_uuid

__all__ = ["USER_COLUMNS", "UserRecord", "get_active_user", "normalize_email", "user_from_row"]

USER_COLUMNS = (
    "id, email, password_hash, full_name, is_active, is_admin, email_verified_at,"
    " password_legacy, created_at"
)


@dataclass(frozen=True)
class UserRecord:
    id: uuid.UUID
    email: str
    password_hash: str
    full_name: str | None
    is_active: bool
    is_admin: bool
    email_verified_at: datetime | None
    password_legacy: bool
    created_at: datetime

    @property
    def email_verified(self) -> bool:
        return self.email_verified_at is not None


def normalize_email(email: str) -> str:
    """An address as stored and looked up: without surrounding whitespace, lower-cased."""
    return email.strip().lower()


def user_from_row(row: dict[str, Any]) -> UserRecord:
    """A `users` row (USER_COLUMNS) as a record, values as the ORM would give them."""
    verified = row["email_verified_at"]
    return UserRecord(
        id=as_uuid(row["id"]),
        email=row["email"],
        password_hash=row["password_hash"],
        full_name=row["full_name"],
        is_active=bool(row["is_active"]),
        is_admin=bool(row["is_admin"]),
        email_verified_at=None if verified is None else as_datetime(verified),
        password_legacy=bool(row["password_legacy"]),
        created_at=as_datetime(row["created_at"]),
    )


def get_active_user(db: Db, *, user_id: uuid.UUID) -> UserRecord:
    """The token's user, who must still exist and be active (else 401)."""
    row = db.one(f"SELECT {USER_COLUMNS} FROM users WHERE id = :id", {"id": user_id})  # noqa: S608
    if row is None or not row["is_active"]:
        raise Unauthorized("the token's user no longer exists or is disabled")
    return user_from_row(row)
