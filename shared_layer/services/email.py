"""Email: sending a transactional email, and recording what SendGrid says happened to them.

Sending happens after the business transaction commits (a registration is not undone because
an email could not leave): `send_email` stores the message in `email_messages`, then delivers it
through the backend — the local outbox (the row plus a log line; the embedded default) or
SendGrid (`EMAIL_BACKEND`, or `auto`: SendGrid when `SENDGRID_API_KEY` is set) — and records the
result. An address on the suppression list is not sent to; its message is stored `suppressed`.

SendGrid's event webhook feeds `record_sendgrid_events`: each event is stored once, keyed by
`sg_event_id`, as the user's email history; bounces, drops, spam reports and unsubscribes put
the address on the suppression list.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from shared_layer.config import get_settings
from shared_layer.database import session_scope
from shared_layer.email.templates import RenderedEmail, render
from shared_layer.errors import StratusError
from shared_layer.idempotency import insert_new
from shared_layer.models import EmailEvent, EmailMessage, EmailSuppression, User, utcnow

__all__ = [
    "SUPPRESSING_EVENTS",
    "BatchReceipt",
    "EmailRequest",
    "SentEmail",
    "email_backend",
    "queue_email",
    "record_sendgrid_events",
    "send_email",
    "suppression_reason",
]

logger = logging.getLogger(__name__)

SUPPRESSING_EVENTS = frozenset(
    {"bounce", "dropped", "spamreport", "unsubscribe", "group_unsubscribe"}
)
_CHUNK = 500  # addresses per IN (...) lookup


@dataclass(frozen=True)
class EmailRequest:
    """An email a service wants sent once its transaction has committed."""

    to: str
    template: str
    context: Mapping[str, str] = field(default_factory=dict)
    user_id: uuid.UUID | None = None


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


def suppression_reason(session: Session, *, email: str) -> str | None:
    return session.scalar(
        select(EmailSuppression.reason).where(EmailSuppression.email == email.strip().lower())
    )


def queue_email(session: Session, *, request: EmailRequest) -> tuple[EmailMessage, RenderedEmail]:
    """Render and store the message: `suppressed`, `outbox` (local: that is delivery) or
    `sending` (SendGrid: the caller delivers it after commit)."""
    settings = get_settings()
    to = request.to.strip().lower()
    defaults = {"product": settings.sendgrid_from_name, "name": to.partition("@")[0], "email": to}
    rendered = render(request.template, {**defaults, **request.context})
    backend = email_backend()
    reason = suppression_reason(session, email=to)
    status = "suppressed" if reason else ("outbox" if backend == "outbox" else "sending")
    message = EmailMessage(
        user_id=request.user_id,
        to_email=to,
        template=request.template,
        subject=rendered.subject,
        body_text=rendered.text,
        backend=backend,
        status=status,
        error=f"the address is suppressed ({reason})" if reason else None,
    )
    session.add(message)
    session.flush()
    if reason:
        logger.info("email %s not sent: %s is suppressed (%s)", request.template, to, reason)
    elif backend == "outbox":
        logger.info(
            "email %s kept in the local outbox for %s: %s",
            request.template,
            to,
            rendered.subject,
            # the text (links in it) helps a developer; in production it stays out of the log
            extra={"email_id": str(message.id), "to": to}
            | ({} if settings.is_production else {"body": rendered.text}),
        )
    return message, rendered


def send_email(request: EmailRequest) -> SentEmail:
    """Store, then deliver one email, in transactions of its own; raises `StratusError` when
    SendGrid cannot take it (the message is kept as `failed` with the reason)."""
    with session_scope() as session:
        message, rendered = queue_email(session, request=request)
        message_id, status, to = message.id, message.status, message.to_email
    if status != "sending":
        return SentEmail(message_id, status)
    from shared_layer.email.sendgrid import OutgoingMessage, send_via_sendgrid  # SendGrid only

    outgoing = OutgoingMessage(
        to=to,
        subject=rendered.subject,
        text=rendered.text,
        html=rendered.html,
        custom_args={"stratus_email_id": str(message_id), "template": request.template},
    )
    try:
        provider_id = send_via_sendgrid(outgoing) or None
    except StratusError as exc:
        _finish(message_id, status="failed", error=exc.detail)
        raise
    _finish(message_id, status="sent", provider_message_id=provider_id, sent_at=utcnow())
    return SentEmail(message_id, "sent", provider_id)


def _finish(message_id: uuid.UUID, **values: Any) -> None:
    with session_scope() as session:
        session.execute(update(EmailMessage).where(EmailMessage.id == message_id).values(**values))


@dataclass(frozen=True)
class BatchReceipt:
    received: int
    stored: int
    duplicates: int
    suppressed: int


def record_sendgrid_events(
    session: Session, *, events: Sequence[Mapping[str, Any]]
) -> BatchReceipt:
    """Store each event not stored before (by `sg_event_id`) and suppress the addresses the
    newly stored ones call for. `events` are validated dicts (`SendGridEventIn`)."""
    emails = sorted({str(e["email"]).strip().lower() for e in events})
    users: dict[str, uuid.UUID] = {}
    for start in range(0, len(emails), _CHUNK):
        chunk = emails[start : start + _CHUNK]
        found = session.execute(select(User.email, User.id).where(User.email.in_(chunk))).all()
        users.update((email, user_id) for email, user_id in found)
    now = utcnow()
    rows: list[dict[str, Any]] = []
    for event in events:
        email = str(event["email"]).strip().lower()
        rows.append(
            {
                "sg_event_id": event["sg_event_id"],
                "email": email,
                "user_id": users.get(email),
                "event": event["event"],
                "occurred_at": datetime.fromtimestamp(event["timestamp"], UTC),
                "sg_message_id": event.get("sg_message_id"),
                "reason": event.get("reason") or event.get("response"),
                "payload": dict(event),
                "received_at": now,
            }
        )
    first: dict[str, dict[str, Any]] = {}
    for row in rows:  # a repeated id within the batch: the first copy is the one stored
        first.setdefault(row["sg_event_id"], row)
    stored = insert_new(session, EmailEvent, list(first.values()), key="sg_event_id")
    suppress = [
        {
            "email": row["email"],
            "reason": row["event"],
            "sg_event_id": row["sg_event_id"],
            "created_at": now,
        }
        for row in first.values()
        if row["sg_event_id"] in stored and row["event"] in SUPPRESSING_EVENTS
    ]
    suppressed = insert_new(session, EmailSuppression, suppress, key="email")
    return BatchReceipt(len(events), len(stored), len(events) - len(stored), len(suppressed))
