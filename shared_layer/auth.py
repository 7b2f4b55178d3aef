"""Passwords and tokens.

Passwords are taken as typed and normalised to NFKC (NIST SP 800-63B), so every encoding of
"ä" is one password, then hashed with bcrypt. Access, password-reset and email-verification
tokens are JWTs (PyJWT, HMAC) carrying `sub`, `typ`, `iss`, `aud`, `iat`, `exp` and `jti`,
decoded with an explicit algorithm allowlist (the configured HMAC algorithm only, so `alg: none`
and key confusion with RS/ES tokens are refused) and every one of those claims required and of
its type (`iat` and `exp` integer Unix times); `typ` keeps a password-reset token from passing
as an access token. An access token also names its session (`sid`), which the HTTP adapter
checks is still open (`shared_layer.services.sessions`). A password-reset token carries a
digest of the password hash it was issued against, so it stops working once the password
changes (one use). Refresh tokens are opaque random strings; only their SHA-256 is stored (see
`shared_layer.services.accounts`).

PyJWT is imported where a token is made or checked, not with this module: it loads
`cryptography` for the asymmetric algorithms (~20 ms of a cold start) and registration, which
imports this module to hash the password, issues no token.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import unicodedata
import uuid
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import bcrypt

from shared_layer.config import get_settings
from shared_layer.errors import InvalidInput, Unauthorized

TokenType = Literal["access", "password_reset", "email_verification"]
REQUIRED_CLAIMS = ["sub", "typ", "iss", "aud", "iat", "exp", "jti"]
TOKEN_TTL = {
    "password_reset": timedelta(hours=1),
    "email_verification": timedelta(days=2),
}
BCRYPT_MAX_BYTES = 72
MAX_TIMESTAMP = 253_402_300_799  # 9999-12-31T23:59:59Z: the last second a datetime holds


@dataclass(frozen=True)
class TokenPayload:
    user_id: uuid.UUID
    token_type: TokenType
    token_id: str
    issued_at: datetime
    expires_at: datetime
    email: str | None
    session_id: uuid.UUID | None = None  # set on every access token
    password_fingerprint: str | None = None

    @property
    def is_expired(self) -> bool:
        return datetime.now(UTC) >= self.expires_at

    def matches_password(self, password_hash: str) -> bool:
        """Whether a reset token was issued against this (still current) password hash."""
        expected = password_fingerprint(password_hash)
        return self.password_fingerprint is not None and hmac.compare_digest(
            self.password_fingerprint, expected
        )


def normalize_password(password: str) -> str:
    """The password as hashed: NFKC, so that the composed and decomposed "ä" (or a full-width
    digit and its ASCII twin) are one password; nothing is stripped."""
    return unicodedata.normalize("NFKC", password)


def hash_password(password: str) -> str:
    encoded = normalize_password(password).encode("utf-8", "surrogatepass")
    if len(encoded) > BCRYPT_MAX_BYTES:
        raise InvalidInput(f"password is longer than {BCRYPT_MAX_BYTES} bytes")
    rounds = get_settings().bcrypt_rounds
    return bcrypt.hashpw(encoded, bcrypt.gensalt(rounds)).decode()


def verify_password(password: str, hashed: str) -> bool:
    return _check(normalize_password(password), hashed)


def verify_legacy_password(password: str, hashed: str) -> bool:
    """Check `password` as hashes made before normalisation stored it: stripped of surrounding
    whitespace, not normalised (`users.password_legacy`)."""
    return _check(password.strip(), hashed)


def legacy_form_differs(password: str) -> bool:
    """Whether a legacy hash would need a check of its own for `password`."""
    return password.strip() != normalize_password(password)


def _check(candidate: str, hashed: str) -> bool:
    encoded = candidate.encode("utf-8", "surrogatepass")
    if len(encoded) > BCRYPT_MAX_BYTES:
        return False
    try:
        return bcrypt.checkpw(encoded, hashed.encode())
    except ValueError:  # a malformed stored hash is a failed check, not a crash
        return False


_dummy_hashes: dict[int, str] = {}


def burn_password_check(password: str) -> None:
    """Spend the time of a real check when there is no user, so timing does not reveal emails."""
    verify_password(password, dummy_hash())


def dummy_hash() -> str:
    """A hash no password matches, with the configured cost, for checks that must take time."""
    rounds = get_settings().bcrypt_rounds
    if rounds not in _dummy_hashes:
        _dummy_hashes[rounds] = hash_password(secrets.token_urlsafe(16))
    return _dummy_hashes[rounds]


def password_fingerprint(password_hash: str) -> str:
    """A short digest of a stored password hash, for binding a reset token to it."""
    return hashlib.sha256(password_hash.encode()).hexdigest()[:16]


def _encode(claims: dict[str, Any], ttl: timedelta) -> str:
    settings = get_settings()
    now = datetime.now(UTC)
    payload = {
        **claims,
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "iat": now,
        "exp": now + ttl,
        "jti": secrets.token_urlsafe(16),
    }
    import jwt

    return jwt.encode(
        payload, settings.jwt_secret.get_secret_value(), algorithm=settings.jwt_algorithm
    )


def create_access_token(
    *, user_id: uuid.UUID | str, session_id: uuid.UUID, email: str | None = None
) -> str:
    """An access token of the session `session_id` (`shared_layer.services.sessions`)."""
    ttl = timedelta(seconds=get_settings().access_token_ttl_seconds)
    claims: dict[str, Any] = {"sub": str(user_id), "typ": "access", "sid": str(session_id)}
    if email:
        claims["email"] = email
    return _encode(claims, ttl)


def create_password_reset_token(*, user_id: uuid.UUID | str, password_hash: str) -> str:
    """A reset token for the user's current password; check it with `matches_password`."""
    claims = {
        "sub": str(user_id),
        "typ": "password_reset",
        "pwf": password_fingerprint(password_hash),
    }
    return _encode(claims, TOKEN_TTL["password_reset"])


def create_email_verification_token(*, user_id: uuid.UUID | str, email: str) -> str:
    claims = {"sub": str(user_id), "typ": "email_verification", "email": email}
    return _encode(claims, TOKEN_TTL["email_verification"])


def verify_token(token: str, *, expected_type: TokenType = "access") -> TokenPayload:
    """Decode and check a token; any failure is `Unauthorized` saying what was wrong."""
    import jwt

    settings = get_settings()
    try:
        claims = jwt.decode(
            token,
            settings.jwt_secret.get_secret_value(),
            algorithms=[settings.jwt_algorithm],
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            options={"require": REQUIRED_CLAIMS},
            leeway=5,
        )
    except jwt.ExpiredSignatureError as exc:
        raise Unauthorized("the token has expired") from exc
    except jwt.MissingRequiredClaimError as exc:
        raise Unauthorized(f"the token lacks the required claim {exc.claim!r}") from exc
    except jwt.InvalidTokenError as exc:
        raise Unauthorized(
            "the token is invalid (bad signature, issuer, audience or format)"
        ) from exc
    if claims.get("typ") != expected_type:
        raise Unauthorized(f"the token is not of type {expected_type!r}")
    issued_at, expires_at = _timestamp(claims, "iat"), _timestamp(claims, "exp")
    user_id = _uuid_claim(claims, "sub", "the token's subject is not a user id")
    session_id = None
    if expected_type == "access":
        if "sid" not in claims:
            raise Unauthorized("the token names no session; sign in again")
        session_id = _uuid_claim(claims, "sid", "the token's session is not a session id")
    email, fingerprint = claims.get("email"), claims.get("pwf")
    return TokenPayload(
        user_id=user_id,
        token_type=expected_type,
        token_id=str(claims["jti"]),
        issued_at=issued_at,
        expires_at=expires_at,
        email=email if isinstance(email, str) else None,
        session_id=session_id,
        password_fingerprint=fingerprint if isinstance(fingerprint, str) else None,
    )


def _timestamp(claims: dict[str, Any], name: str) -> datetime:
    """An integer Unix time (PyJWT lets numeric strings and out-of-range numbers through)."""
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TIMESTAMP:
        raise Unauthorized(f"the token's {name!r} claim is not an integer Unix time")
    return datetime.fromtimestamp(value, UTC)


def _uuid_claim(claims: dict[str, Any], name: str, problem: str) -> uuid.UUID:
    value = claims[name]
    if isinstance(value, str):
        with suppress(ValueError):
            return uuid.UUID(value)
    raise Unauthorized(problem)


def get_user_id_from_token(token: str) -> uuid.UUID:
    return verify_token(token).user_id


def new_refresh_token() -> tuple[str, str]:
    """A fresh refresh token and the SHA-256 hex digest under which it is stored."""
    token = "rt_" + secrets.token_urlsafe(32)
    return token, hash_refresh_token(token)


def hash_refresh_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
