"""SendGrid's event webhook: what happened to the emails Stratus sent.

`record_sendgrid_events` stores each event once, keyed by `sg_event_id`, as the user's email
history; bounces, drops, spam reports and unsubscribes put the address on the suppression list,
which `shared_layer.services.email` reads before sending. It runs on the ORM (the webhook's
cold start does not count), apart from the sending module, whose callers (auth's registration)
must not import SQLAlchemy.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared_layer.idempotency import insert_new
from shared_layer.models import EmailEvent, EmailSuppression, User, utcnow

__all__ = ["SUPPRESSING_EVENTS", "BatchReceipt", "record_sendgrid_events"]

SUPPRESSING_EVENTS = frozenset(
    {"bounce", "dropped", "spamreport", "unsubscribe", "group_unsubscribe"}
)
_CHUNK = 500  # addresses per IN (...) lookup


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
