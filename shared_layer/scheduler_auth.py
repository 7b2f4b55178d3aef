"""Who may run the scheduled jobs: Cloud Scheduler's identity, or an administrator.

Cloud Scheduler calls `metrics_cleanup` with a Google-signed OIDC ID token (RS256) for the
job's service account. It is verified with google-auth's `id_token.verify_token` — signature
against Google's published certificates (`GOOGLE_OIDC_CERTS_URL`), expiry, and audience
(`SCHEDULER_OIDC_AUDIENCE`, the function's URL) — then the issuer must be Google's and the
verified `email` must be `SCHEDULER_SERVICE_ACCOUNT_EMAIL`. Any other bearer token is taken as
a Stratus access token, whose user must be an administrator. The two cannot be confused: a
Stratus token is HMAC-signed (HS*), a Google one RS256, and each is verified only with its
own key.
"""

from __future__ import annotations

import threading
from typing import Any

import jwt

from shared_layer.config import get_settings
from shared_layer.errors import Forbidden, Unauthorized, UpstreamError
from shared_layer.logging_config import log_security_event

GOOGLE_ISSUERS = frozenset({"accounts.google.com", "https://accounts.google.com"})
CLOCK_SKEW_SECONDS = 10

_transport_lock = threading.Lock()
_transport: Any = None


def authorize_operator(token: str, *, action: str) -> str:
    """Who is calling, for the log ("scheduler <email>" or "admin <user id>"); `Unauthorized`
    when the token does not verify, `Forbidden` when it is not an allowed identity."""
    try:
        algorithm = jwt.get_unverified_header(token).get("alg")
    except jwt.InvalidTokenError as exc:
        raise Unauthorized("the token is not a JWT") from exc
    if algorithm == "RS256":
        return f"scheduler {verify_scheduler_token(token)}"
    from shared_layer.auth import verify_token
    from shared_layer.database import session_scope
    from shared_layer.services.admin import require_admin

    user_id = verify_token(token).user_id
    with session_scope() as session:
        require_admin(session, user_id=user_id, action=action)
    return f"admin {user_id}"


def verify_scheduler_token(token: str) -> str:
    """The verified service-account email of a Google OIDC ID token meant for this function."""
    from google.auth import exceptions as google_exceptions
    from google.oauth2 import id_token

    settings = get_settings()
    audience, expected = settings.scheduler_oidc_audience, settings.scheduler_service_account_email
    if not (audience and expected):
        log_security_event("scheduler_token_refused", reason="scheduler identity not configured")
        raise Unauthorized(
            "Google ID tokens are not accepted here: SCHEDULER_OIDC_AUDIENCE and "
            "SCHEDULER_SERVICE_ACCOUNT_EMAIL are not set"
        )
    try:
        claims = id_token.verify_token(
            token,
            _google_transport(),
            audience=audience,
            certs_url=settings.google_oidc_certs_url,
            clock_skew_in_seconds=CLOCK_SKEW_SECONDS,
        )
    except google_exceptions.TransportError as exc:
        raise UpstreamError("could not fetch Google's token certificates") from exc
    except (ValueError, google_exceptions.GoogleAuthError) as exc:
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        log_security_event("scheduler_token_refused", reason=reason)
        raise Unauthorized(f"the ID token does not verify: {reason}") from exc
    if claims.get("iss") not in GOOGLE_ISSUERS:
        log_security_event("scheduler_token_refused", reason="issuer", issuer=claims.get("iss"))
        raise Unauthorized("the ID token was not issued by Google")
    email = claims.get("email")
    if email != expected or claims.get("email_verified") is not True:
        log_security_event("scheduler_identity_refused", email=email)
        raise Forbidden("the ID token is not the scheduler's identity")
    return str(email)


def _google_transport() -> Any:
    """google-auth's requests transport, one per process (it keeps a connection pool)."""
    global _transport
    with _transport_lock:
        if _transport is None:
            from google.auth.transport.requests import Request

            _transport = Request()
        return _transport
