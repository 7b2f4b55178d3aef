"""Google's OIDC certificate endpoint on loopback, and ID tokens signed the way Google signs them.

`GoogleCerts` makes an RSA key and a self-signed X.509 certificate (cryptography), serves
`{"<kid>": "<PEM certificate>"}` — the format of https://www.googleapis.com/oauth2/v1/certs —
over real HTTP, and `mint(...)` signs RS256 ID tokens with google-auth's own signer and JWT
encoder. Code under test then runs google-auth's real `id_token.verify_token` against it, with
only the certificates URL pointed here. `requests` counts the fetches.
"""

from __future__ import annotations

import functools
import json
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

CERTS_PATH = "/oauth2/v1/certs"


@functools.cache  # an RSA key takes a moment to make; one per name per test session is enough
def _key_and_cert(common_name: str) -> tuple[bytes, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return private, cert.public_bytes(serialization.Encoding.PEM)


class GoogleCerts:
    """The endpoint and a signing key; `with GoogleCerts() as google: google.mint(...)`."""

    def __init__(self) -> None:
        self.kid = "test-key-1"
        self._private, self._cert = _key_and_cert("accounts.google.com")
        self.requests = 0
        self.status = 200
        self._server: ThreadingHTTPServer | None = None

    @property
    def certs_url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}{CERTS_PATH}"

    def mint(
        self,
        *,
        audience: str,
        email: str,
        email_verified: bool = True,
        issuer: str = "https://accounts.google.com",
        expires_in: int = 3600,
        signer_key: bytes | None = None,
        **extra: Any,
    ) -> str:
        """An ID token like Cloud Scheduler's, signed with this endpoint's key (or another)."""
        from google.auth import crypt
        from google.auth import jwt as google_jwt

        now = int(time.time())
        payload = {
            "iss": issuer,
            "aud": audience,
            "azp": "1234567890",
            "sub": "1234567890",
            "email": email,
            "email_verified": email_verified,
            "iat": now,
            "exp": now + expires_in,
            **extra,
        }
        signer = crypt.RSASigner.from_string(signer_key or self._private, key_id=self.kid)
        token: bytes = google_jwt.encode(signer, payload)
        return token.decode()

    @staticmethod
    def other_key() -> bytes:
        """A private key the endpoint does not publish (a forger's)."""
        return _key_and_cert("forger")[0]

    def __enter__(self) -> GoogleCerts:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_GET(self) -> None:
                fake.requests += 1
                if self.path != CERTS_PATH or fake.status != 200:
                    self.send_response(404 if self.path != CERTS_PATH else fake.status)
                    self.end_headers()
                    return
                body = json.dumps({fake.kid: fake._cert.decode()}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()
