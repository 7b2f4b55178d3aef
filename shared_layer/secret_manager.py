"""Google Secret Manager as a settings source (opt-in: `SECRET_MANAGER_PROJECT`).

Imported only when that variable is set, so a function deployed with platform-injected secret
environment variables never imports google-cloud-secret-manager. Each secret is named like the
environment variable it stands for (`JWT_SECRET`, `OPENAI_API_KEY`, …; case is ignored) and its
`latest` version is read; environment variables and `.env` take precedence over it.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from google.cloud.secretmanager import SecretManagerServiceClient
    from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

logger = logging.getLogger(__name__)

DEFAULT_HOST = "secretmanager.googleapis.com"


def secret_manager_source(
    settings_cls: type[BaseSettings], *, project_id: str
) -> PydanticBaseSettingsSource:
    """pydantic-settings' Secret Manager source, reading through `secret_manager_client()`."""
    from pydantic_settings import GoogleSecretManagerSettingsSource

    return GoogleSecretManagerSettingsSource(
        settings_cls,
        project_id=project_id,
        secret_client=secret_manager_client(),
        case_sensitive=False,
    )


def secret_manager_client() -> SecretManagerServiceClient:
    """A Secret Manager client over REST that checks each payload's CRC32C.

    REST, not gRPC: one HTTPS request per secret, no channel to set up, and the same wire an
    emulator speaks. `SECRET_MANAGER_ENDPOINT` (e.g. `http://127.0.0.1:8085`; the scheme is
    kept by the REST transport) points it at an emulator with anonymous credentials;
    otherwise Application Default Credentials apply.
    """
    from google.auth.credentials import AnonymousCredentials
    from google.cloud.secretmanager import SecretManagerServiceClient
    from google.cloud.secretmanager_v1.services.secret_manager_service.transports.rest import (
        SecretManagerServiceRestTransport,
    )

    endpoint = os.environ.get("SECRET_MANAGER_ENDPOINT")
    transport = SecretManagerServiceRestTransport(
        host=endpoint or DEFAULT_HOST,
        credentials=AnonymousCredentials() if endpoint else None,  # type: ignore[no-untyped-call]
        interceptor=_checksum_interceptor(),
    )
    return SecretManagerServiceClient(transport=transport)


def _checksum_interceptor() -> Any:
    """An interceptor that refuses a payload whose CRC32C does not match its data.

    The client library parses `dataCrc32c` but never checks it; Google's guidance is that the
    caller does. pydantic-settings reads a refused payload as "no value" (it swallows the
    error), so the warning logged here, naming the secret version and never the data, says why.
    """
    import google_crc32c
    from google.api_core.exceptions import DataLoss
    from google.cloud.secretmanager_v1.services.secret_manager_service.transports.rest import (
        SecretManagerServiceRestInterceptor,
    )

    class ChecksumInterceptor(SecretManagerServiceRestInterceptor):
        def post_access_secret_version_with_metadata(self, response: Any, metadata: Any) -> Any:
            payload = response.payload
            expected = payload.data_crc32c if "data_crc32c" in payload else None
            if expected is not None and expected != google_crc32c.value(payload.data):
                logger.warning("secret %s failed its CRC32C check; ignoring it", response.name)
                raise DataLoss(  # type: ignore[no-untyped-call]
                    f"secret {response.name} failed its CRC32C check"
                )
            return response, metadata

    return ChecksumInterceptor()
