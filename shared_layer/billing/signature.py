"""The `Stripe-Signature` check every Stripe webhook passes before anything is read or written.

The header is `t=<unix seconds>,v1=<hex HMAC-SHA256 of "t.body">[,v1=...][,v0=...]`. Several
`v1` values appear while a signing secret is being rolled; any one matching is enough. `v0`
(and any other scheme) is ignored, so a header with only `v0` fails. The timestamp must be
within the tolerance of our clock on either side: stripe-python's `WebhookSignature` refuses
only old ones, so a replayed header stamped ahead would pass it.

This is the scheme Stripe documents ("verify manually"), done here rather than through
stripe-python: one parse of the header, one HMAC over the raw bytes, and no import of the
library on the webhook's path (a test holds the verdicts to the library's).
"""

from __future__ import annotations

import hashlib
import hmac
import time

from shared_layer.errors import InvalidSignature

__all__ = ["verify_stripe_signature"]


def _parse(header: str) -> tuple[int, list[str]]:
    """The signed timestamp and the `v1` signatures of a header."""
    timestamp: int | None = None
    signatures: list[str] = []
    for item in header.split(","):
        name, _, value = item.strip().partition("=")
        if name == "t" and timestamp is None:
            try:
                timestamp = int(value)
            except ValueError:
                break
        elif name == "v1":
            signatures.append(value)
    if timestamp is None:
        raise InvalidSignature("Stripe-Signature is malformed: no integer timestamp t=")
    return timestamp, signatures


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
    if not header or not header.strip():
        raise InvalidSignature("the Stripe-Signature header is missing")
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidSignature(
            "the body is not UTF-8, so it cannot be what Stripe signed"
        ) from None
    timestamp, signatures = _parse(header)
    if not signatures:
        raise InvalidSignature("Stripe-Signature has no v1 signature")
    signed = str(timestamp).encode() + b"." + payload
    expected = hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).hexdigest().encode()
    # as bytes: compare_digest refuses str with non-ASCII characters, which a header can hold
    if not any(hmac.compare_digest(expected, v.encode("utf-8", "replace")) for v in signatures):
        raise InvalidSignature("Stripe-Signature has no v1 signature matching the body")
    # In integers: a stamp of hundreds of digits overflows float arithmetic.
    age = int(time.time() if now is None else now) - timestamp
    if age < -tolerance_seconds:
        raise InvalidSignature(
            f"Stripe-Signature timestamp is {-age} s in the future; "
            f"the tolerance is {tolerance_seconds} s"
        )
    if age > tolerance_seconds:
        raise InvalidSignature(
            f"Stripe-Signature timestamp is {age} s old; the tolerance is {tolerance_seconds} s"
        )
    return timestamp
