"""A loopback server answering SendGrid's v3 Mail Send API, and a signer of Event Webhook
batches with a key made for the test.

`POST /v3/mail/send` checks the bearer key (401), validates the body as SendGrid does
(`personalizations[].to[].email`, `from.email`, `subject`, `content[]` — 400 with SendGrid's
`errors` list), records the message and answers `202` with an `X-Message-Id`. It can be told to
fail the next N calls with a status.

`EventSigner()` holds a fresh ECDSA P-256 key: `public_key` is the base64 DER that SendGrid's
settings page shows, and `headers(body, timestamp=...)` signs `timestamp + body` the way
SendGrid does. `sendgrid_event(...)` builds one event of a batch.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support.loopback import (
    LoopbackHandler,
    LoopbackHTTPServer,
    LoopbackServer,
    RecordedRequest,
)

SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"


class EventSigner:
    """Signs event batches with a new P-256 key, as SendGrid's Signed Event Webhook does."""

    def __init__(self) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        der = self._key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.public_key = base64.b64encode(der).decode()

    def sign(self, body: bytes, timestamp: str) -> str:
        signature = self._key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
        return base64.b64encode(signature).decode()

    def headers(self, body: bytes, *, timestamp: int | None = None) -> dict[str, str]:
        stamp = str(int(time.time()) if timestamp is None else timestamp)
        return {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: self.sign(body, stamp),
            TIMESTAMP_HEADER: stamp,
        }


def sendgrid_event(
    email: str,
    event: str = "delivered",
    *,
    sg_event_id: str | None = None,
    timestamp: int | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One event as SendGrid posts it."""
    return {
        "email": email,
        "timestamp": int(time.time()) if timestamp is None else timestamp,
        "event": event,
        "sg_event_id": sg_event_id or secrets.token_urlsafe(16),
        "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0",
        "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>",
        **extra,
    }


@dataclass
class SentMail:
    message_id: str
    headers: dict[str, str]
    body: dict[str, Any]

    @property
    def to(self) -> list[str]:
        return [t["email"] for p in self.body["personalizations"] for t in p["to"]]


def _problems(body: Any) -> list[dict[str, Any]]:
    if not isinstance(body, dict):
        return [{"message": "Bad Request", "field": None}]
    problems = []
    personalizations = body.get("personalizations")
    if not isinstance(personalizations, list) or not personalizations:
        problems.append(
            {"message": "The personalizations field is required.", "field": "personalizations"}
        )
    else:
        for index, item in enumerate(personalizations):
            to = item.get("to") if isinstance(item, dict) else None
            if not isinstance(to, list) or not all(
                isinstance(t, dict) and "@" in str(t.get("email", "")) for t in to
            ):
                problems.append(
                    {
                        "message": "Does not contain a valid address.",
                        "field": f"personalizations.{index}.to",
                    }
                )
    sender = body.get("from")
    if not isinstance(sender, dict) or "@" not in str(sender.get("email", "")):
        problems.append(
            {"message": "The from email does not contain a valid address.", "field": "from.email"}
        )
    if not isinstance(body.get("subject"), str) or not body["subject"]:
        problems.append({"message": "The subject is required.", "field": "subject"})
    content = body.get("content")
    if not isinstance(content, list) or not content or content[0].get("type") != "text/plain":
        problems.append(
            {
                "message": "The content value must be a non-empty string; text/plain first.",
                "field": "content",
            }
        )
    return problems


class _Handler(LoopbackHandler):
    server: LoopbackHTTPServer[FakeSendGridServer]

    def do_POST(self) -> None:
        fake = self.server.fake
        raw = self.read_body()
        fake._record(RecordedRequest("POST", self.path, dict(self.headers.items()), raw))
        if self.path != "/v3/mail/send":
            self.send_json(404, {"errors": [{"message": "Not found", "field": None}]})
            return
        if self.headers.get("Authorization") != f"Bearer {fake.api_key}":
            message = "The provided authorization grant is invalid, expired, or revoked"
            self.send_json(401, {"errors": [{"message": message, "field": None, "help": None}]})
            return
        status = fake._take_failure()
        if status is not None:
            self.send_json(status, {"errors": [{"message": f"simulated {status}", "field": None}]})
            return
        try:
            body = json.loads(raw)
        except ValueError:
            self.send_json(400, {"errors": [{"message": "Bad Request", "field": None}]})
            return
        problems = _problems(body)
        if problems:
            self.send_json(400, {"errors": problems})
            return
        message_id = secrets.token_urlsafe(16)
        with fake._lock:
            fake.sent.append(SentMail(message_id, dict(self.headers.items()), body))
        self.send_json(202, None, {"X-Message-Id": message_id})


@dataclass
class FakeSendGridServer(LoopbackServer[RecordedRequest]):
    """Mail Send on loopback: `sent` holds the accepted messages, `requests` every call (the
    raw body, as it came)."""

    handler = _Handler

    api_key: str = "SG.test-key"
    sent: list[SentMail] = field(default_factory=list)
