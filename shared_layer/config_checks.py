"""What production refuses: missing or placeholder secrets and unusable settings, named by
variable and never by value. `get_settings()` runs it at start in production; `health`
reports it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import SecretStr

from shared_layer.config import DEV_JWT_SECRET, SECRET_FIELDS

if TYPE_CHECKING:
    from shared_layer.config import Settings

PLACEHOLDER_SECRETS = frozenset(
    {"", "change-me", "changeme", "placeholder", "secret", DEV_JWT_SECRET, "xxx", "todo"}
)
JWT_MIN_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}  # RFC 7518 3.2: a key >= the hash size


def _is_placeholder(secret: SecretStr | None) -> bool:
    return secret is None or secret.get_secret_value().strip().lower() in PLACEHOLDER_SECRETS


def production_problems(settings: Settings) -> list[str]:
    """What stops this configuration from running in production, naming each variable."""
    problems: list[str] = []
    jwt_minimum = JWT_MIN_BYTES[settings.jwt_algorithm]
    if _is_placeholder(settings.jwt_secret):
        problems.append("JWT_SECRET is missing or a placeholder")
    elif len(settings.jwt_secret.get_secret_value().encode()) < jwt_minimum:
        problems.append(
            f"JWT_SECRET is shorter than {jwt_minimum} bytes ({settings.jwt_algorithm})"
        )
    if settings.cloud_sql_instance:
        if not settings.cloud_sql_iam_auth and _is_placeholder(settings.db_password):
            problems.append("DB_PASSWORD is missing or a placeholder (CLOUD_SQL_INSTANCE is set)")
    elif settings.database_url.startswith("sqlite"):
        problems.append("DATABASE_URL points at SQLite; set it or CLOUD_SQL_INSTANCE")
    # An OpenAI-compatible server at OPENAI_BASE_URL may need no key; OpenAI itself does.
    llm_needs_key = settings.llm_provider != "offline" and not settings.openai_base_url
    if llm_needs_key and _is_placeholder(settings.openai_api_key):
        problems.append(
            "OPENAI_API_KEY is missing or a placeholder (or set LLM_PROVIDER=offline on purpose)"
        )
    named = " ".join(problems)
    for field in SECRET_FIELDS:  # an optional secret may be absent, but never a placeholder
        value, variable = getattr(settings, field), field.upper()
        if value is not None and variable not in named and _is_placeholder(value):
            problems.append(f"{variable} is set to a placeholder")
    if settings.pubsub_mode == "gcp" and not settings.gcp_project_id:
        problems.append("GOOGLE_CLOUD_PROJECT is missing (PUBSUB_MODE=gcp)")
    return problems
