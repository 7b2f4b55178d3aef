"""SendGrid's v3 Mail Send API (`POST /v3/mail/send`), over the standard library's HTTP client.

The documented request is small enough that the `sendgrid` package would add a dependency and
nothing else. SendGrid answers `202 Accepted` with the message id in `X-Message-Id`. A 429, a
5xx or a network failure is retried with backoff and then becomes an `UpstreamError`; any other
4xx (a bad key, a refused sender) is permanent and becomes `EmailRejected`. `custom_args` come
back on every event SendGrid posts to the event webhook, which is how an event finds its message.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass

from shared_layer.config import get_settings
from shared_layer.errors import StratusError, UpstreamError
from shared_layer.utils import retry

__all__ = ["EmailRejected", "OutgoingMessage", "send_via_sendgrid"]

logger = logging.getLogger(__name__)

MAIL_SEND_PATH = "/v3/mail/send"


class EmailRejected(StratusError):
    """SendGrid refused the message for good (bad key, unverified sender, invalid address)."""

    status, slug, title = 502, "email-rejected", "Email provider rejected the message"


@dataclass(frozen=True)
class OutgoingMessage:
    to: str
    subject: str
    text: str
    html: str
    custom_args: Mapping[str, str]


def _body(message: OutgoingMessage) -> bytes:
    settings = get_settings()
    return json.dumps(
        {
            "personalizations": [{"to": [{"email": message.to}]}],
            "from": {"email": settings.sendgrid_from_email, "name": settings.sendgrid_from_name},
            "subject": message.subject,
            "content": [
                {"type": "text/plain", "value": message.text},
                {"type": "text/html", "value": message.html},
            ],
            "custom_args": dict(message.custom_args),
        }
    ).encode()


def _post(url: str, body: bytes, api_key: str, timeout: float) -> str:
    request = urllib.request.Request(  # noqa: S310 - the URL is the configured https API base
        url,
        data=body,
        method="POST",
        headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return str(response.headers.get("X-Message-Id") or "")
    except urllib.error.HTTPError as exc:
        detail = exc.read(2000).decode("utf-8", "replace")
        if exc.code == 429 or exc.code >= 500:
            raise UpstreamError(f"SendGrid answered {exc.code}: {detail}") from None
        raise EmailRejected(f"SendGrid refused the message ({exc.code}): {detail}") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        raise UpstreamError(f"SendGrid did not answer: {exc}") from None


def send_via_sendgrid(message: OutgoingMessage) -> str:
    """Send one message; SendGrid's message id (empty if it gave none)."""
    settings = get_settings()
    if settings.sendgrid_api_key is None:
        raise UpstreamError("email is not configured: SENDGRID_API_KEY is not set")
    url = settings.sendgrid_api_base.rstrip("/") + MAIL_SEND_PATH
    post = retry(max_attempts=3, delay=0.25, max_delay=2.0, exceptions=(UpstreamError,))(_post)
    return post(
        url,
        _body(message),
        settings.sendgrid_api_key.get_secret_value(),
        settings.sendgrid_timeout_seconds,
    )
