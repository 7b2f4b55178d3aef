"""Settings: one typed, cached object; production refuses missing or placeholder secrets."""

from __future__ import annotations

import pytest
from pydantic import SecretStr, ValidationError

from shared_layer import config
from shared_layer.config import ConfigError, Settings, get_settings, reset_settings
from shared_layer.config_checks import production_problems

STRONG_JWT = "prod-jwt-" + "k" * 40
# A production configuration that passes; each test breaks one thing.
PRODUCTION = {
    "STRATUS_ENV": "production",
    "JWT_SECRET": STRONG_JWT,
    "DATABASE_URL": "postgresql+pg8000://stratus:pw@db.internal/stratus",
    "LLM_PROVIDER": "openai",
    "OPENAI_API_KEY": "sk-live-0123456789abcdef",
}


def refused(settings_env, **changes: str | None) -> str:
    """The ConfigError message for PRODUCTION with `changes` applied."""
    settings_env(**{**PRODUCTION, **changes})
    with pytest.raises(ConfigError) as info:
        get_settings()
    return str(info.value)


def test_settings_are_built_once_and_cached(settings_env):
    first = get_settings()

    assert get_settings() is first
    reset_settings()
    assert get_settings() is not first


def test_reset_settings_picks_up_a_changed_environment(monkeypatch):
    assert get_settings().openai_model == "gpt-4o-mini"
    monkeypatch.setenv("OPENAI_MODEL", "gpt-4.1")

    assert get_settings().openai_model == "gpt-4o-mini"  # cached
    reset_settings()
    assert get_settings().openai_model == "gpt-4.1"


def test_environment_values_are_typed(settings_env):
    settings_env(DATABASE_POOL_SIZE="7", DATABASE_ECHO="true", OPENAI_TEMPERATURE="0.2")

    settings = get_settings()

    assert settings.database_pool_size == 7
    assert settings.database_echo is True
    assert settings.openai_temperature == pytest.approx(0.2)


@pytest.mark.parametrize(
    "raw", ["https://a.example, https://b.example", '["https://a.example","https://b.example"]']
)
def test_cors_origins_accept_a_comma_list_or_json(settings_env, raw):
    settings_env(CORS_ORIGINS=raw)

    assert get_settings().cors_origins == ["https://a.example", "https://b.example"]


def test_secrets_are_secret_str_and_masked_in_repr(settings_env):
    settings_env(OPENAI_API_KEY="sk-visible-if-leaked-123", STRIPE_SECRET_KEY="sk_test_leak_456")

    settings = get_settings()

    assert isinstance(settings.jwt_secret, SecretStr)
    assert isinstance(settings.openai_api_key, SecretStr)
    for text in (repr(settings), str(settings), settings.model_dump_json()):
        assert "sk-visible-if-leaked-123" not in text
        assert "sk_test_leak_456" not in text
        assert "test-secret-" not in text


def test_urls_that_may_hold_passwords_are_left_out_of_repr(settings_env):
    settings_env(
        DATABASE_URL="postgresql+pg8000://stratus:db-pass-789@db/stratus",
        REDIS_URL="redis://:redis-pass-012@cache:6379/0",
    )

    settings = get_settings()

    assert settings.database_url.endswith("@db/stratus")
    for text in (repr(settings), str(settings)):
        assert "db-pass-789" not in text
        assert "redis-pass-012" not in text


def test_invalid_value_names_the_field_but_never_echoes_the_value(settings_env):
    settings_env(DATABASE_POOL_SIZE="not-a-number-secretish")

    with pytest.raises(ValidationError) as info:
        get_settings()

    assert "database_pool_size" in str(info.value)
    assert "secretish" not in str(info.value)


def test_log_level_is_case_insensitive_and_checked(settings_env):
    settings_env(LOG_LEVEL="debug")
    assert get_settings().log_level == "DEBUG"

    settings_env(LOG_LEVEL="chatty")
    with pytest.raises(ValidationError, match="log_level"):
        get_settings()


def test_aliased_variables_fill_their_fields(settings_env):
    settings_env(GOOGLE_CLOUD_PROJECT="proj-1", K_SERVICE="agents", STRATUS_ENV="local")

    settings = get_settings()

    assert settings.gcp_project_id == "proj-1"
    assert settings.function_name == "agents"


def test_dotenv_file_is_read_and_environment_wins_over_it(settings_env, tmp_path, monkeypatch):
    (tmp_path / ".env").write_text("OPENAI_MODEL=from-dotenv\nSENDGRID_FROM_NAME=Dotenv Co\n")
    monkeypatch.chdir(tmp_path)
    settings_env(OPENAI_MODEL="from-env")

    settings = get_settings()

    assert settings.openai_model == "from-env"
    assert settings.sendgrid_from_name == "Dotenv Co"


def test_llm_mode_auto_is_offline_without_key_or_base_url(settings_env):
    settings_env(LLM_PROVIDER="auto")
    assert get_settings().llm_mode == "offline"

    settings_env(LLM_PROVIDER="auto", OPENAI_BASE_URL="http://127.0.0.1:9/v1")
    assert get_settings().llm_mode == "openai"


def test_valid_production_configuration_starts(settings_env):
    settings_env(**PRODUCTION)

    settings = get_settings()

    assert settings.is_production
    assert production_problems(settings) == []


def test_production_refuses_missing_jwt_secret(settings_env):
    message = refused(settings_env, JWT_SECRET=None)

    assert "JWT_SECRET is missing or a placeholder" in message
    assert config.DEV_JWT_SECRET not in message


@pytest.mark.parametrize("placeholder", ["change-me", "CHANGEME", "", "secret", "  placeholder "])
def test_production_refuses_placeholder_jwt_secret(settings_env, placeholder):
    message = refused(settings_env, JWT_SECRET=placeholder)

    assert "JWT_SECRET is missing or a placeholder" in message


def test_production_refuses_short_jwt_secret_without_showing_it(settings_env):
    message = refused(settings_env, JWT_SECRET="short-but-real-value")

    assert "JWT_SECRET is shorter than 32 bytes (HS256)" in message
    assert "short-but-real-value" not in message


def test_production_wants_a_64_byte_jwt_secret_for_hs512(settings_env):
    message = refused(settings_env, JWT_ALGORITHM="HS512", JWT_SECRET="h" * 63)

    assert "JWT_SECRET is shorter than 64 bytes (HS512)" in message


def test_production_refuses_sqlite(settings_env):
    message = refused(settings_env, DATABASE_URL="sqlite:///./prod.db")

    assert "DATABASE_URL points at SQLite" in message


def test_production_refuses_cloud_sql_without_password(settings_env):
    message = refused(settings_env, CLOUD_SQL_INSTANCE="p:europe-west1:db", DB_PASSWORD=None)

    assert "DB_PASSWORD is missing or a placeholder" in message


def test_production_accepts_cloud_sql_with_iam_auth_and_no_password(settings_env):
    settings_env(**PRODUCTION, CLOUD_SQL_INSTANCE="p:europe-west1:db", CLOUD_SQL_IAM_AUTH="true")

    assert get_settings().cloud_sql_iam_auth is True


def test_production_refuses_missing_openai_key(settings_env):
    message = refused(settings_env, OPENAI_API_KEY=None)

    assert "OPENAI_API_KEY is missing or a placeholder" in message


def test_production_refuses_placeholder_openai_key(settings_env):
    message = refused(settings_env, OPENAI_API_KEY="changeme")

    assert "OPENAI_API_KEY" in message
    assert "changeme" not in message.lower()


def test_production_with_auto_provider_and_no_key_asks_for_a_decision(settings_env):
    message = refused(settings_env, LLM_PROVIDER="auto", OPENAI_API_KEY=None)

    assert "OPENAI_API_KEY is missing" in message
    assert "LLM_PROVIDER=offline" in message


def test_production_accepts_offline_llm_on_purpose(settings_env):
    settings_env(**{**PRODUCTION, "LLM_PROVIDER": "offline", "OPENAI_API_KEY": None})

    assert get_settings().llm_mode == "offline"


def test_production_accepts_compatible_server_without_key(settings_env):
    settings_env(
        **{**PRODUCTION, "OPENAI_API_KEY": None, "OPENAI_BASE_URL": "http://llm.internal/v1"}
    )

    assert get_settings().llm_mode == "openai"


@pytest.mark.parametrize(
    "variable", ["STRIPE_SECRET_KEY", "STRIPE_WEBHOOK_SECRET", "SENDGRID_API_KEY"]
)
def test_production_refuses_an_optional_secret_set_to_a_placeholder(settings_env, variable):
    message = refused(settings_env, **{variable: "change-me"})

    assert f"{variable} is set to a placeholder" in message


def test_production_accepts_absent_optional_secrets(settings_env):
    settings_env(**PRODUCTION, STRIPE_SECRET_KEY=None, SENDGRID_API_KEY=None)

    assert get_settings().stripe_secret_key is None


def test_production_refuses_gcp_pubsub_without_project(settings_env):
    message = refused(settings_env, PUBSUB_MODE="gcp", GOOGLE_CLOUD_PROJECT=None)

    assert "GOOGLE_CLOUD_PROJECT is missing" in message


def test_production_names_every_problem_at_once(settings_env):
    message = refused(
        settings_env, JWT_SECRET=None, DATABASE_URL="sqlite:///x.db", OPENAI_API_KEY=None
    )

    for variable in ("JWT_SECRET", "DATABASE_URL", "OPENAI_API_KEY"):
        assert variable in message


def test_local_mode_runs_with_development_defaults(settings_env):
    settings_env(JWT_SECRET=None, DATABASE_URL=None)

    settings = get_settings()

    assert settings.jwt_secret.get_secret_value() == config.DEV_JWT_SECRET
    assert settings.database_url == config.DEFAULT_SQLITE_URL


def test_grouped_accessors_read_the_same_settings(settings_env):
    settings_env(
        API_PORT="9090",
        OPENAI_MODEL="gpt-4.1-mini",
        SENDGRID_FROM_EMAIL="ops@example.com",
        STRIPE_PUBLISHABLE_KEY="pk_test_1",
        GOOGLE_CLOUD_PROJECT="proj-2",
        REDIS_URL="redis://cache:6379/1",
    )

    assert config.get_api_config().port == 9090
    assert config.get_openai_config().model == "gpt-4.1-mini"
    assert config.get_sendgrid_config().from_email == "ops@example.com"
    assert config.get_stripe_config().publishable_key == "pk_test_1"
    assert config.get_gcp_config().project_id == "proj-2"
    assert config.get_redis_url() == "redis://cache:6379/1"
    assert config.get_database_url() == "sqlite:///:memory:"


def test_settings_can_be_built_directly_with_keyword_values():
    settings = Settings(jwt_secret="direct-" + "d" * 40, database_pool_size=3)

    assert settings.database_pool_size == 3
    assert settings.jwt_secret.get_secret_value().startswith("direct-")
