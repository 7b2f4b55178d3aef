"""Typed settings, built on first use and cached.

Sources, highest priority first: init kwargs, environment variables, `.env`, then
(only when `SECRET_MANAGER_PROJECT` is set) Google Secret Manager. On Cloud Functions the
deployment injects secrets as environment variables (`secret_environment_variables`), which
costs nothing at cold start; the Secret Manager source is for processes that run outside a
function (migrations in Cloud Build, the CLI) or that must see a rotated secret without a
redeploy. See docs/configuration.md.

In production (`STRATUS_ENV=production`) a missing or placeholder secret stops the process
with a message naming the variable, never its value.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from shared_layer.plan_defaults import DEFAULT_MODEL_PRICES, DEFAULT_PLANS, PLAN_NAMES, PlanLimits

if TYPE_CHECKING:
    from google.cloud.secretmanager import SecretManagerServiceClient

# 32+ bytes so PyJWT does not warn when a function runs alone; refused in production.
DEV_JWT_SECRET = "dev-only-insecure-secret-never-deploy"  # noqa: S105
DEFAULT_SQLITE_URL = "sqlite:///.stratus/stratus.db"
SECRET_FIELDS = (
    "jwt_secret",
    "db_password",
    "openai_api_key",
    "stripe_secret_key",
    "stripe_webhook_secret",
    "sendgrid_api_key",
)


class ConfigError(RuntimeError):
    """Configuration that cannot run; the message names the variables, never their values."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        populate_by_name=True,
        hide_input_in_errors=True,  # a validation error never echoes a value (it may be secret)
    )

    environment: Literal["local", "production"] = Field("local", alias="STRATUS_ENV")
    function_name: str = Field("stratus", alias="K_SERVICE")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"

    # database
    database_url: str = Field(DEFAULT_SQLITE_URL, repr=False)  # may hold a password
    database_pool_size: int = Field(5, ge=1, le=100)
    database_echo: bool = False
    cloud_sql_instance: str | None = None  # "project:region:instance" → Cloud SQL connector
    db_user: str = "stratus"
    db_password: SecretStr | None = None
    db_name: str = "stratus"
    cloud_sql_iam_auth: bool = False

    redis_url: str | None = Field(None, repr=False)  # may hold a password; None: no Redis

    # LLM
    llm_provider: Literal["auto", "offline", "openai"] = "auto"
    openai_api_key: SecretStr | None = None
    openai_base_url: str | None = None
    openai_model: str = "gpt-4o-mini"
    openai_temperature: float = Field(0.7, ge=0, le=2)
    openai_timeout_seconds: float = Field(60.0, gt=0)
    openai_max_retries: int = Field(2, ge=0, le=10)

    # security
    jwt_secret: SecretStr = SecretStr(DEV_JWT_SECRET)
    jwt_algorithm: Literal["HS256", "HS384", "HS512"] = "HS256"
    jwt_issuer: str = "stratus"
    jwt_audience: str = "stratus-api"
    access_token_ttl_seconds: int = Field(900, ge=60, le=86_400)
    refresh_token_ttl_days: int = Field(30, ge=1, le=365)
    password_min_length: int = Field(15, ge=8, le=64)
    password_min_strength: int = Field(3, ge=0, le=4)  # zxcvbn's score, 0 (weakest) to 4
    bcrypt_rounds: int = Field(12, ge=4, le=16)
    auth_session_check_seconds: float = Field(5.0, ge=0, le=60)  # revocation takes effect within
    trusted_proxy_hops: int = Field(0, ge=0, le=10)  # proxies that append to X-Forwarded-For
    login_throttle_account_ip_failures: int = Field(5, ge=1, le=1000)
    login_throttle_ip_failures: int = Field(50, ge=1, le=100_000)
    login_throttle_account_failures: int = Field(20, ge=1, le=1000)
    login_throttle_max_delay_seconds: int = Field(900, ge=1, le=86_400)
    login_throttle_account_max_delay_seconds: int = Field(60, ge=1, le=86_400)

    # HTTP API
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    debug: bool = False
    max_body_bytes: int = Field(1_048_576, ge=1024)

    # Google Cloud
    gcp_project_id: str | None = Field(None, alias="GOOGLE_CLOUD_PROJECT")
    gcs_bucket: str | None = None
    gcp_credentials_file: str | None = Field(None, alias="GOOGLE_APPLICATION_CREDENTIALS")
    secret_manager_project: str | None = None
    pubsub_mode: Literal["local", "gcp"] = "local"
    tasks_topic: str = "stratus-tasks"
    local_push_endpoint: str | None = None  # local mode: deliver over HTTP instead of in-process
    local_push_mode: Literal["thread", "sync"] = "thread"  # sync: deliver before publish returns
    pubsub_subscription: str = "stratus-tasks-task-runner"

    # agents and tasks
    agent_system: Literal["simple", "enhanced"] = "simple"
    agent_timeout_seconds: int = Field(60, ge=1, le=3600)
    agent_max_tokens: int = Field(1024, ge=1, le=128_000)
    agent_memory_messages: int = Field(10, ge=0, le=200)
    task_max_attempts: int = Field(3, ge=1, le=20)
    task_max_input_chars: int = Field(32_000, ge=1)

    # monitoring and operations (shared_layer/monitoring.py, functions/metrics_cleanup)
    monitoring_enabled: bool = True  # record a metric row per API call and per task run
    monitoring_batch_size: int = Field(50, ge=1, le=1000)  # API-call rows written per INSERT
    monitoring_flush_seconds: float = Field(2.0, ge=0, le=60)  # …or once the oldest is this old
    # USD micros per million tokens, (input, output), by model name or name prefix
    model_prices: dict[str, tuple[int, int]] = Field(
        default_factory=lambda: dict(DEFAULT_MODEL_PRICES)
    )
    api_call_metrics_retention_days: int = Field(30, ge=1, le=3650)
    task_metrics_retention_days: int = Field(90, ge=1, le=3650)
    metrics_cleanup_batch_size: int = Field(5000, ge=100, le=100_000)
    metrics_cleanup_batch_seconds: float = Field(0.5, gt=0, le=5)  # target time of one batch
    metrics_cleanup_max_seconds: float = Field(240.0, gt=0, le=3600)  # stop; the next run goes on
    task_republish_after_seconds: int = Field(900, ge=60)  # queued this long: publish again
    metrics_max_range_days: int = Field(31, ge=1, le=3650)  # longest GET /health/metrics range
    llm_probe_ttl_seconds: int = Field(300, ge=10)  # the cloud health probe's cache
    scheduler_service_account_email: str | None = None  # Cloud Scheduler's OIDC identity
    scheduler_oidc_audience: str | None = None  # the metrics_cleanup URL the token is minted for
    google_oidc_certs_url: str = "https://www.googleapis.com/oauth2/v1/certs"
    local_cleanup_interval_seconds: int = Field(300, ge=0)  # the local stack's timer; 0: off

    # billing and email (used from issue 3 on)
    stripe_secret_key: SecretStr | None = None
    stripe_publishable_key: str | None = None
    stripe_webhook_secret: SecretStr | None = None
    sendgrid_api_key: SecretStr | None = None
    sendgrid_from_email: str = "no-reply@example.com"
    sendgrid_from_name: str = "Stratus"
    stripe_api_base: str | None = None  # None: Stripe itself; tests point it at a loopback server
    stripe_max_network_retries: int = Field(2, ge=0, le=10)
    stripe_webhook_tolerance_seconds: int = Field(300, ge=1, le=3600)
    stripe_price_pro: str | None = None
    stripe_price_team: str | None = None
    billing_plans: Annotated[dict[str, PlanLimits], NoDecode] = Field(
        default_factory=lambda: {k: PlanLimits(**v) for k, v in DEFAULT_PLANS.items()}
    )
    billing_grace_period_days: int = Field(7, ge=0, le=90)
    billing_success_url: str = "http://127.0.0.1:8080/?checkout=success"
    billing_cancel_url: str = "http://127.0.0.1:8080/?checkout=cancel"
    billing_portal_return_url: str = "http://127.0.0.1:8080/"
    email_backend: Literal["auto", "outbox", "sendgrid"] = "auto"
    sendgrid_api_base: str = "https://api.sendgrid.com"
    sendgrid_timeout_seconds: float = Field(10.0, gt=0)
    sendgrid_webhook_public_key: str | None = None  # base64 DER, as SendGrid shows it
    sendgrid_webhook_max_age_seconds: int = Field(300, ge=1, le=86_400)
    sendgrid_webhook_max_body_bytes: int = Field(16 * 1_048_576, ge=1024)

    @field_validator(*SECRET_FIELDS, mode="before")
    @classmethod
    def _strip_secret(cls, value: Any) -> Any:
        # `echo key | gcloud secrets create` stores a trailing newline; an API key with one
        # breaks HTTP headers, so surrounding whitespace is never part of a secret.
        return value.strip() if isinstance(value, str) else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("billing_plans", mode="before")
    @classmethod
    def _merge_plans(cls, value: Any) -> Any:
        """BILLING_PLANS (JSON) changes the default plans field by field: `{"free": {"agents":
        3}}` keeps the rest of free, pro and team as they are."""
        if isinstance(value, str):
            value = json.loads(value) if value.strip() else {}
        if not isinstance(value, dict):
            return value
        unknown = sorted(set(value) - set(PLAN_NAMES))
        if unknown:
            raise ValueError(f"unknown plans {unknown}; the plans are {list(PLAN_NAMES)}")
        merged: dict[str, Any] = {}
        for name in PLAN_NAMES:
            override = value.get(name) or {}
            if isinstance(override, PlanLimits):
                override = override.model_dump()
            merged[name] = {**DEFAULT_PLANS[name], **override}
        return merged

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        """`https://a.example,https://b.example` or a JSON list."""
        if not isinstance(value, str):
            return value
        if value.strip().startswith("["):
            return json.loads(value)
        return [v.strip() for v in value.split(",") if v.strip()]

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources = (init_settings, env_settings, dotenv_settings, file_secret_settings)
        project = os.environ.get("SECRET_MANAGER_PROJECT")
        if not project:
            return sources
        from shared_layer.secret_manager import secret_manager_source

        return (*sources, secret_manager_source(settings_cls, project_id=project))

    @property
    def is_production(self) -> bool:
        return self.environment == "production"

    @property
    def llm_mode(self) -> Literal["offline", "openai"]:
        """`auto` means OpenAI when a key or a base URL is configured, else offline."""
        if self.llm_provider != "auto":
            return self.llm_provider
        return "openai" if (self.openai_api_key or self.openai_base_url) else "offline"


def secret_manager_client() -> SecretManagerServiceClient:
    """The REST Secret Manager client settings read through (`shared_layer.secret_manager`)."""
    from shared_layer.secret_manager import secret_manager_client as build

    return build()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    settings = Settings()
    if settings.is_production:
        from shared_layer.config_checks import production_problems

        problems = production_problems(settings)
        if problems:
            raise ConfigError("refusing to start in production: " + "; ".join(problems))
    return settings


def reset_settings() -> None:
    """Forget the cached settings (tests, and the CLI after it changes the environment)."""
    get_settings.cache_clear()


# Grouped accessors, as the seed's modules offered them.


@dataclass(frozen=True)
class ApiConfig:
    host: str
    port: int
    cors_origins: list[str]
    debug: bool
    max_body_bytes: int


@dataclass(frozen=True)
class OpenAIConfig:
    mode: Literal["offline", "openai"]
    api_key: SecretStr | None
    base_url: str | None
    model: str
    temperature: float
    timeout_seconds: float
    max_retries: int


@dataclass(frozen=True)
class StripeConfig:
    secret_key: SecretStr | None
    publishable_key: str | None
    webhook_secret: SecretStr | None
    api_base: str | None = None
    webhook_tolerance_seconds: int = 300


@dataclass(frozen=True)
class SendGridConfig:
    api_key: SecretStr | None
    from_email: str
    from_name: str
    api_base: str = "https://api.sendgrid.com"
    webhook_public_key: str | None = None
    webhook_max_age_seconds: int = 300


@dataclass(frozen=True)
class GcpConfig:
    project_id: str | None
    bucket: str | None
    credentials_file: str | None
    pubsub_mode: str
    tasks_topic: str


def get_database_url() -> str:
    return get_settings().database_url


def get_redis_url() -> str | None:
    return get_settings().redis_url


def get_api_config() -> ApiConfig:
    s = get_settings()
    return ApiConfig(s.api_host, s.api_port, list(s.cors_origins), s.debug, s.max_body_bytes)


def get_openai_config() -> OpenAIConfig:
    s = get_settings()
    return OpenAIConfig(
        s.llm_mode,
        s.openai_api_key,
        s.openai_base_url,
        s.openai_model,
        s.openai_temperature,
        s.openai_timeout_seconds,
        s.openai_max_retries,
    )


def get_stripe_config() -> StripeConfig:
    s = get_settings()
    return StripeConfig(
        s.stripe_secret_key,
        s.stripe_publishable_key,
        s.stripe_webhook_secret,
        s.stripe_api_base,
        s.stripe_webhook_tolerance_seconds,
    )


def get_sendgrid_config() -> SendGridConfig:
    s = get_settings()
    return SendGridConfig(
        s.sendgrid_api_key,
        s.sendgrid_from_email,
        s.sendgrid_from_name,
        s.sendgrid_api_base,
        s.sendgrid_webhook_public_key,
        s.sendgrid_webhook_max_age_seconds,
    )


def get_gcp_config() -> GcpConfig:
    s = get_settings()
    return GcpConfig(
        s.gcp_project_id, s.gcs_bucket, s.gcp_credentials_file, s.pubsub_mode, s.tasks_topic
    )
