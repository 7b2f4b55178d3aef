"""Email: sending a transactional email, in plain SQL (`shared_layer.sql`).

Sending happens after the business transaction commits (a registration is not undone because
an email could not leave): `send_email` stores the message in `email_messages`, then delivers it
through the backend — the local outbox (the row plus a log line; the embedded default) or
SendGrid (`EMAIL_BACKEND`, or `auto`: SendGrid when `SENDGRID_API_KEY` is set) — and records the
result. An address on the suppression list is not sent to; its message is stored `suppressed`.

What SendGrid reports back (its event webhook, which fills the suppression list) is recorded by
`shared_layer.services.email_events`. This module imports no SQLAlchemy: registration sends the
welcome email on auth's request path.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from shared_layer.config import get_settings
from shared_layer.email.templates import RenderedEmail, render
from shared_layer.errors import StratusError
from shared_layer.sql import Db, transaction

__all__ = [
    "EmailRequest",
    "QueuedEmail",
    "SentEmail",
    "email_backend",
    "queue_email",
    "send_email",
    "suppression_reason",
]

logger = logging.getLogger(__name__)

_FINISH_COLUMNS = frozenset({"status", "error", "provider_message_id", "sent_at"})
_ADDRESSEE_FIELDS = frozenset({"name", "email", "product"})


@dataclass(frozen=True)
class EmailRequest:
    """An email a service wants sent once its transaction has committed. `context` fills the
    template's own fields (a link, an amount); the addressee's name, address and the product's
    name are filled in by `queue_email`."""

    to: str
    template: str
    context: Mapping[str, str] = field(default_factory=dict)
    user_id: uuid.UUID | None = None


@dataclass(frozen=True)
class QueuedEmail:
    """A stored `email_messages` row, as `queue_email` left it."""

    id: uuid.UUID
    to_email: str
    backend: str
    status: str  # outbox | sending | suppressed


@dataclass(frozen=True)
class SentEmail:
    id: uuid.UUID
    status: str  # outbox | sent | suppressed | failed
    provider_message_id: str | None = None


def email_backend() -> Literal["outbox", "sendgrid"]:
    settings = get_settings()
    if settings.email_backend != "auto":
        return settings.email_backend
    return "sendgrid" if settings.sendgrid_api_key else "outbox"


def suppression_reason(db: Db, *, email: str) -> str | None:
    reason: str | None = db.scalar(
        "SELECT reason FROM email_suppressions WHERE email = :email",
        {"email": email.strip().lower()},
    )
    return reason


def queue_email(db: Db, *, request: EmailRequest) -> tuple[QueuedEmail, RenderedEmail]:
    """Render and store the message: `suppressed`, `outbox` (local: that is delivery) or
    `sending` (SendGrid: the caller delivers it after commit)."""
    settings = get_settings()
    to = request.to.strip().lower()
    if _ADDRESSEE_FIELDS & set(request.context):
        raise ValueError("the addressee's name and address are filled in here, not by callers")
    defaults = {
        "product": settings.sendgrid_from_name,
        "name": _greeting_name(db, to=to, user_id=request.user_id),
        "email": to,
    }
    rendered = render(request.template, {**request.context, **defaults})
    backend = email_backend()
    reason = suppression_reason(db, email=to)
    status = "suppressed" if reason else ("outbox" if backend == "outbox" else "sending")
    message_id = uuid.uuid4()
    db.insert(
        "email_messages",
        {
            "id": message_id,
            "user_id": request.user_id,
            "to_email": to,
            "template": request.template,
            "subject": rendered.subject,
            "body_text": rendered.text,
            "backend": backend,
            "status": status,
            "error": f"the address is suppressed ({reason})" if reason else None,
            "created_at": datetime.now(UTC),
        },
    )
    if reason:
        logger.info("email %s not sent: %s is suppressed (%s)", request.template, to, reason)
    elif backend == "outbox":
        logger.info(
            "email %s kept in the local outbox for %s: %s",
            request.template,
            to,
            rendered.subject,
            # the text (links in it) helps a developer; in production it stays out of the log
            extra={"email_id": str(message_id), "to": to}
            | ({} if settings.is_production else {"body": rendered.text}),
        )
    return QueuedEmail(message_id, to, backend, status), rendered


def _greeting_name(db: Db, *, to: str, user_id: uuid.UUID | None) -> str:
    """Whom the email greets: the account's name once its owner proved the address is theirs,
    else the address itself. Anyone can register someone else's address with any text as the
    name; until the address is verified, nothing the registrant typed reaches its inbox."""
    if user_id is not None:
        row = db.one(
            "SELECT email, full_name, email_verified_at FROM users WHERE id = :id",
            {"id": user_id},
        )
        if row and row["full_name"] and row["email_verified_at"] and row["email"] == to:
            return str(row["full_name"])
    return to.partition("@")[0]


def send_email(request: EmailRequest) -> SentEmail:
    """Store, then deliver one email, in transactions of its own; raises `StratusError` when
    SendGrid cannot take it (the message is kept as `failed` with the reason)."""
    with transaction() as db:
        message, rendered = queue_email(db, request=request)
    if message.status != "sending":
        return SentEmail(message.id, message.status)
    from shared_layer.email.sendgrid import OutgoingMessage, send_via_sendgrid  # SendGrid only

    outgoing = OutgoingMessage(
        to=message.to_email,
        subject=rendered.subject,
        text=rendered.text,
        html=rendered.html,
        custom_args={"stratus_email_id": str(message.id), "template": request.template},
    )
    try:
        provider_id = send_via_sendgrid(outgoing) or None
    except StratusError as exc:
        _finish(message.id, status="failed", error=exc.detail)
        raise
    _finish(message.id, status="sent", provider_message_id=provider_id, sent_at=datetime.now(UTC))
    return SentEmail(message.id, "sent", provider_id)


def _finish(message_id: uuid.UUID, **values: Any) -> None:
    assert set(values) <= _FINISH_COLUMNS, set(values) - _FINISH_COLUMNS
    assignments = ", ".join(f"{name} = :{name}" for name in values)
    with transaction() as db:
        db.execute(
            f"UPDATE email_messages SET {assignments} WHERE id = :id",  # noqa: S608 - names are ours
            {**values, "id": message_id},
        )
