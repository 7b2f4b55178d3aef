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
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

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


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_POST(self) -> None:
        fake = self.server.fake
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if self.path != "/v3/mail/send":
            self._send(404, {"errors": [{"message": "Not found", "field": None}]})
            return
        if self.headers.get("Authorization") != f"Bearer {fake.api_key}":
            message = "The provided authorization grant is invalid, expired, or revoked"
            self._send(401, {"errors": [{"message": message, "field": None, "help": None}]})
            return
        status = fake._take_failure()
        if status is not None:
            self._send(status, {"errors": [{"message": f"simulated {status}", "field": None}]})
            return
        try:
            body = json.loads(raw)
        except ValueError:
            self._send(400, {"errors": [{"message": "Bad Request", "field": None}]})
            return
        problems = _problems(body)
        if problems:
            self._send(400, {"errors": problems})
            return
        message_id = secrets.token_urlsafe(16)
        with fake._lock:
            fake.sent.append(SentMail(message_id, dict(self.headers.items()), body))
        self._send(202, None, {"X-Message-Id": message_id})

    def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        payload = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        if payload:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(payload)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeSendGridServer


@dataclass
class _Failure:
    status: int
    remaining: int


@dataclass
class FakeSendGridServer:
    api_key: str = "SG.test-key"
    host: str = "127.0.0.1"
    sent: list[SentMail] = field(default_factory=list)
    _failures: list[_Failure] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _httpd: _Server | None = None

    @property
    def base_url(self) -> str:
        assert self._httpd is not None, "the server is not running"
        return f"http://{self.host}:{self._httpd.server_address[1]}"

    def fail_next(self, status: int, times: int = 1) -> None:
        with self._lock:
            self._failures.append(_Failure(status, times))

    def start(self) -> FakeSendGridServer:
        self._httpd = _Server((self.host, 0), _Handler)
        self._httpd.fake = self
        threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> FakeSendGridServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _take_failure(self) -> int | None:
        with self._lock:
            while self._failures and self._failures[0].remaining <= 0:
                self._failures.pop(0)
            if not self._failures:
                return None
            self._failures[0].remaining -= 1
            return self._failures[0].status
