"""Sessions: one per sign-in. Its refresh tokens rotate within it and its access tokens name it
(`sid`), so ending it — logout, a reused refresh token — ends both.

An access token is a signed JWT that nothing needs to look up, which is what makes it cheap;
but a token must stop working soon after its user is disabled or deleted or its session ends,
not when it expires. So every authenticated request checks the token's session against the
database (`check_session`): open, and its user active. A check that passed is trusted for
`AUTH_SESSION_CHECK_SECONDS` (5 s by default; 0 checks every request) by the instance that made
it, and an instance forgets its trust at once when it ends a session itself: that is the bound
on how long a revoked or disabled account's token still works anywhere.
"""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime

from shared_layer.config import get_settings
from shared_layer.errors import Unauthorized
from shared_layer.sql import Db, as_uuid, transaction

__all__ = [
    "USER_AGENT_MAX_CHARS",
    "check_session",
    "forget_checked_sessions",
    "open_session",
    "revoke_session",
]

USER_AGENT_MAX_CHARS = 400
_MAX_TRUSTED = 10_000  # sessions an instance remembers checking; past it, it starts afresh

_lock = threading.Lock()
_checked: dict[uuid.UUID, float] = {}  # session id -> time.monotonic() of its last good check


def open_session(
    db: Db, *, user_id: uuid.UUID, user_agent: str | None, ip_address: str | None
) -> uuid.UUID:
    """A new session of the user's; its id goes into the tokens issued for it."""
    session_id = uuid.uuid4()
    now = datetime.now(UTC)
    db.insert(
        "auth_sessions",
        {
            "id": session_id,
            "user_id": user_id,
            "created_at": now,
            "last_used_at": now,
            "user_agent": _printable(user_agent, USER_AGENT_MAX_CHARS),
            "ip_address": ip_address,
            "revoked_at": None,
            "revoked_reason": None,
        },
    )
    return session_id


def revoke_session(db: Db, *, session_id: uuid.UUID, reason: str) -> bool:
    """End the session and every refresh token in it; False if it had already ended."""
    now = datetime.now(UTC)
    ended = db.execute(
        "UPDATE auth_sessions SET revoked_at = :now, revoked_reason = :reason"
        " WHERE id = :id AND revoked_at IS NULL",
        {"id": session_id, "now": now, "reason": reason},
    )
    db.execute(
        "UPDATE refresh_tokens SET revoked_at = :now WHERE session_id = :id AND revoked_at IS NULL",
        {"id": session_id, "now": now},
    )
    with _lock:
        _checked.pop(session_id, None)
    return ended == 1


def check_session(*, user_id: uuid.UUID, session_id: uuid.UUID) -> None:
    """`Unauthorized` unless the session is open, is the user's, and the user is active."""
    trusted_for = get_settings().auth_session_check_seconds
    now = time.monotonic()
    checked_at = _checked.get(session_id)
    if checked_at is not None and now - checked_at < trusted_for:
        return
    with transaction() as db:
        row = db.one(
            "SELECT s.user_id, s.revoked_at, u.is_active FROM auth_sessions s"
            " JOIN users u ON u.id = s.user_id WHERE s.id = :id",
            {"id": session_id},
        )
    if row is None or as_uuid(row["user_id"]) != user_id or not row["is_active"]:
        raise Unauthorized("the token's user no longer exists or is disabled")
    if row["revoked_at"] is not None:
        raise Unauthorized("the session has ended (signed out or revoked); sign in again")
    if trusted_for > 0:
        with _lock:
            if len(_checked) >= _MAX_TRUSTED:
                _checked.clear()
            _checked[session_id] = now


def forget_checked_sessions() -> None:
    """Trust no earlier check (tests)."""
    with _lock:
        _checked.clear()


def _printable(text: str | None, limit: int) -> str | None:
    """A header value as stored: printable characters only (PostgreSQL text holds no NUL), cut
    to the column's length."""
    if not text:
        return None
    kept = "".join(ch for ch in text if ch.isprintable())
    return kept[:limit] or None
