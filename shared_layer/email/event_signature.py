"""SendGrid's Signed Event Webhook: ECDSA (P-256, SHA-256) over `timestamp + raw body`.

SendGrid sends the base64 DER signature in `X-Twilio-Email-Event-Webhook-Signature` and the
Unix timestamp in `X-Twilio-Email-Event-Webhook-Timestamp`; the verification key is the base64
DER public key its settings page shows (`SENDGRID_WEBHOOK_PUBLIC_KEY`). A timestamp further than
`SENDGRID_WEBHOOK_MAX_AGE_SECONDS` from now, either way, is refused, so a captured batch cannot
be replayed later. Verification uses `cryptography`; the parsed key is cached.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
from functools import lru_cache
from typing import TYPE_CHECKING

from shared_layer.errors import InvalidSignature, UpstreamError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey

__all__ = ["SIGNATURE_HEADER", "TIMESTAMP_HEADER", "load_public_key", "verify_sendgrid_signature"]

SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"
# Unix seconds, as SendGrid writes them: up to the year 5138 in 11 digits, which is plenty.
_MAX_DIGITS = 11
_UNIX_SECONDS = re.compile(f"[0-9]{{1,{_MAX_DIGITS}}}")


@lru_cache(maxsize=4)
def load_public_key(encoded: str) -> EllipticCurvePublicKey:
    """The P-256 key from its base64 DER (SubjectPublicKeyInfo) form; `UpstreamError` when the
    configured value is not one (a configuration problem, not the sender's)."""
    from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, EllipticCurvePublicKey
    from cryptography.hazmat.primitives.serialization import load_der_public_key

    try:
        key = load_der_public_key(base64.b64decode(encoded.strip(), validate=True))
    except (ValueError, binascii.Error):
        raise UpstreamError("SENDGRID_WEBHOOK_PUBLIC_KEY is not a base64 DER public key") from None
    if not isinstance(key, EllipticCurvePublicKey) or not isinstance(key.curve, SECP256R1):
        raise UpstreamError("SENDGRID_WEBHOOK_PUBLIC_KEY is not an ECDSA P-256 key")
    return key


def verify_sendgrid_signature(
    payload: bytes,
    *,
    signature: str | None,
    timestamp: str | None,
    public_key: str,
    max_age_seconds: int,
    now: float | None = None,
) -> int:
    """The signed timestamp, once `signature` proves SendGrid signed `timestamp + payload`
    within `max_age_seconds` of now; `InvalidSignature` saying why not."""
    from cryptography.exceptions import InvalidSignature as BadSignature
    from cryptography.hazmat.primitives.asymmetric.ec import ECDSA
    from cryptography.hazmat.primitives.hashes import SHA256

    key = load_public_key(public_key)
    if not signature or not signature.strip():
        raise InvalidSignature(f"the {SIGNATURE_HEADER} header is missing")
    if not timestamp or not timestamp.strip():
        raise InvalidSignature(f"the {TIMESTAMP_HEADER} header is missing")
    if not _UNIX_SECONDS.fullmatch(timestamp.strip()):
        raise InvalidSignature(
            f"{TIMESTAMP_HEADER} must be Unix seconds: at most {_MAX_DIGITS} ASCII digits"
        )
    try:
        decoded = base64.b64decode(signature.strip(), validate=True)
    except (ValueError, binascii.Error):
        raise InvalidSignature(f"{SIGNATURE_HEADER} must be base64") from None
    signed_at = int(timestamp.strip())
    age = int(time.time() if now is None else now) - signed_at
    if abs(age) > max_age_seconds:
        when = "old" if age > 0 else "in the future"
        raise InvalidSignature(
            f"the event batch timestamp is {abs(age)} s {when}; the window is {max_age_seconds} s"
        )
    try:
        key.verify(decoded, timestamp.strip().encode() + payload, ECDSA(SHA256()))
    except BadSignature:
        raise InvalidSignature("the event batch signature does not verify") from None
    return signed_at
