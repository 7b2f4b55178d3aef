"""The `Stripe-Signature` check every Stripe webhook passes before anything is read or written.

The header is `t=<unix seconds>,v1=<hex HMAC-SHA256 of "t.body">[,v1=...][,v0=...]`. Several
`v1` values appear while a signing secret is being rolled; any one matching is enough. `v0`
(and any other scheme) is ignored, so a header with only `v0` fails. stripe-python's
`WebhookSignature.verify_header` does the HMAC and the "too old" check; it accepts a timestamp
from the future, so a replay window is closed here too: a timestamp more than the tolerance
ahead of our clock is refused as well.
"""

from __future__ import annotations

import time

from shared_layer.errors import InvalidSignature

__all__ = ["verify_stripe_signature"]


def _signed_timestamp(header: str) -> int:
    for item in header.split(","):
        name, _, value = item.strip().partition("=")
        if name == "t":
            try:
                return int(value)
            except ValueError:
                break
    raise InvalidSignature("Stripe-Signature is malformed: no integer timestamp t=")


def verify_stripe_signature(
    payload: bytes,
    header: str | None,
    *,
    secret: str,
    tolerance_seconds: int,
    now: float | None = None,
) -> int:
    """The signed timestamp, once `header` proves that `payload` was signed with `secret`
    within `tolerance_seconds` of now (either side); `InvalidSignature` saying why not."""
    from stripe import SignatureVerificationError, WebhookSignature

    if not header or not header.strip():
        raise InvalidSignature("the Stripe-Signature header is missing")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidSignature(
            "the body is not UTF-8, so it cannot be what Stripe signed"
        ) from None
    timestamp = _signed_timestamp(header)
    try:
        WebhookSignature.verify_header(text, header, secret, tolerance_seconds)
    except SignatureVerificationError as exc:
        raise InvalidSignature(f"Stripe-Signature does not verify: {exc.user_message}") from None
    now = time.time() if now is None else now
    if timestamp > now + tolerance_seconds:
        raise InvalidSignature(
            f"Stripe-Signature timestamp is {int(timestamp - now)} s in the future; "
            f"the tolerance is {tolerance_seconds} s"
        )
    if timestamp < now - tolerance_seconds:  # stripe checked with its own clock; so do we
        raise InvalidSignature(
            f"Stripe-Signature timestamp is {int(now - timestamp)} s old; "
            f"the tolerance is {tolerance_seconds} s"
        )
    return timestamp
