"""Passwords and tokens.

Passwords are hashed with bcrypt. Access, password-reset and email-verification tokens are
JWTs (PyJWT, HMAC) carrying `sub`, `typ`, `iss`, `aud`, `iat`, `exp` and `jti`, decoded with an
explicit algorithm allowlist (the configured HMAC algorithm only, so `alg: none` and key
confusion with RS/ES tokens are refused) and every one of those claims required; `typ` keeps a
password-reset token from passing as an access token. A password-reset token carries a digest of
the password hash it was issued against, so it stops working once the password changes
(one use). Refresh tokens are opaque random strings; only their SHA-256 is stored (see
`shared_layer.services.accounts`).

PyJWT is imported where a token is made or checked, not with this module: it loads
`cryptography` for the asymmetric algorithms (~20 ms of a cold start) and registration, which
imports this module to hash the password, issues no token.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
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


@dataclass(frozen=True)
class TokenPayload:
    user_id: uuid.UUID
    token_type: TokenType
    token_id: str
    issued_at: datetime
    expires_at: datetime
    email: str | None
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


def hash_password(password: str) -> str:
    encoded = password.encode()
    if len(encoded) > BCRYPT_MAX_BYTES:
        raise InvalidInput(f"password is longer than {BCRYPT_MAX_BYTES} bytes")
    rounds = get_settings().bcrypt_rounds
    return bcrypt.hashpw(encoded, bcrypt.gensalt(rounds)).decode()


def verify_password(password: str, hashed: str) -> bool:
    encoded = password.encode()
    if len(encoded) > BCRYPT_MAX_BYTES:
        return False
    try:
        return bcrypt.checkpw(encoded, hashed.encode())
    except ValueError:  # a malformed stored hash is a failed check, not a crash
        return False


_dummy_hashes: dict[int, str] = {}


def burn_password_check(password: str) -> None:
    """Spend the time of a real check when there is no user, so timing does not reveal emails."""
    rounds = get_settings().bcrypt_rounds
    if rounds not in _dummy_hashes:
        _dummy_hashes[rounds] = hash_password(secrets.token_urlsafe(16))
    verify_password(password, _dummy_hashes[rounds])


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


def create_access_token(*, user_id: uuid.UUID | str, email: str | None = None) -> str:
    ttl = timedelta(seconds=get_settings().access_token_ttl_seconds)
    claims: dict[str, Any] = {"sub": str(user_id), "typ": "access"}
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
    try:
        user_id = uuid.UUID(str(claims["sub"]))
    except ValueError as exc:
        raise Unauthorized("the token's subject is not a user id") from exc
    email, fingerprint = claims.get("email"), claims.get("pwf")
    return TokenPayload(
        user_id=user_id,
        token_type=expected_type,
        token_id=str(claims["jti"]),
        issued_at=datetime.fromtimestamp(claims["iat"], UTC),
        expires_at=datetime.fromtimestamp(claims["exp"], UTC),
        email=email if isinstance(email, str) else None,
        password_fingerprint=fingerprint if isinstance(fingerprint, str) else None,
    )


def get_user_id_from_token(token: str) -> uuid.UUID:
    return verify_token(token).user_id


def new_refresh_token() -> tuple[str, str]:
    """A fresh refresh token and the SHA-256 hex digest under which it is stored."""
    token = "rt_" + secrets.token_urlsafe(32)
    return token, hash_refresh_token(token)


def hash_refresh_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
