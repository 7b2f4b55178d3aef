"""Settings read from Secret Manager: the real REST client against a loopback server."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
from google.api_core.exceptions import NotFound

from shared_layer.config import ConfigError, get_settings
from shared_layer.secret_manager import secret_manager_client
from tests.support.fake_secret_manager import FakeSecretManager

JWT = "sm-jwt-secret-" + "j" * 40
OPENAI = "sk-from-secret-manager-0123456789"
PRODUCTION = {
    "STRATUS_ENV": "production",
    "DATABASE_URL": "postgresql+pg8000://stratus@db.internal/stratus",
    "JWT_SECRET": None,
}


def test_secrets_in_secret_manager_populate_settings_as_secret_str(secret_manager, settings_env):
    secret_manager.add_secret("JWT_SECRET", JWT)
    secret_manager.add_secret("OPENAI_API_KEY", OPENAI)
    settings_env(JWT_SECRET=None, LLM_PROVIDER="auto")

    settings = get_settings()

    assert settings.jwt_secret.get_secret_value() == JWT
    assert settings.openai_api_key is not None
    assert settings.openai_api_key.get_secret_value() == OPENAI
    assert settings.llm_mode == "openai"
    assert JWT not in repr(settings)
    assert OPENAI not in str(settings)


def test_client_really_called_the_server_list_then_access_latest(secret_manager, settings_env):
    secret_manager.add_secret("JWT_SECRET", JWT)
    settings_env(JWT_SECRET=None)

    get_settings()

    paths = secret_manager.paths()
    assert paths[0] == f"/v1/projects/{secret_manager.project}/secrets"
    assert (
        f"/v1/projects/{secret_manager.project}/secrets/JWT_SECRET/versions/latest:access" in paths
    )
    assert all(r.method == "GET" for r in secret_manager.requests)
    assert secret_manager.requests[0].query["$alt"] == ["json;enum-encoding=int"]
    assert "Authorization" not in secret_manager.requests[0].headers  # anonymous for an emulator


def test_the_latest_version_wins(secret_manager, settings_env):
    secret_manager.add_secret("JWT_SECRET", "old-" + "o" * 40, JWT)
    settings_env(JWT_SECRET=None)

    assert get_settings().jwt_secret.get_secret_value() == JWT


def test_secret_on_a_later_list_page_is_found(secret_manager, settings_env):
    for name in ("AAA_UNRELATED", "BBB_UNRELATED", "CCC_UNRELATED", "DDD_UNRELATED"):
        secret_manager.add_secret(name, "x")
    secret_manager.add_secret("OPENAI_API_KEY", OPENAI)  # sorts last: third page of two
    settings_env(LLM_PROVIDER="auto")

    key = get_settings().openai_api_key

    assert key is not None
    assert key.get_secret_value() == OPENAI
    tokens = [
        r.query.get("pageToken") for r in secret_manager.requests if r.path.endswith("/secrets")
    ]
    assert tokens == [None, ["2"], ["4"]]


def test_environment_variables_override_secret_manager(secret_manager, settings_env):
    secret_manager.add_secret("JWT_SECRET", JWT)
    secret_manager.add_secret("OPENAI_API_KEY", OPENAI)
    settings_env(JWT_SECRET="env-jwt-secret-" + "e" * 40, OPENAI_API_KEY="sk-from-env-0123")

    settings = get_settings()

    assert settings.jwt_secret.get_secret_value() == "env-jwt-secret-" + "e" * 40
    assert settings.openai_api_key is not None
    assert settings.openai_api_key.get_secret_value() == "sk-from-env-0123"


def test_secret_names_match_variables_case_insensitively(secret_manager, settings_env):
    secret_manager.add_secret("jwt_secret", JWT)
    settings_env(JWT_SECRET=None)

    assert get_settings().jwt_secret.get_secret_value() == JWT


def test_trailing_newline_of_a_secret_created_with_echo_is_stripped(secret_manager, settings_env):
    secret_manager.add_secret("OPENAI_API_KEY", OPENAI + "\n")
    settings_env(LLM_PROVIDER="auto")

    key = get_settings().openai_api_key

    assert key is not None
    assert key.get_secret_value() == OPENAI


def test_production_start_names_a_secret_missing_from_both_sources(secret_manager, settings_env):
    secret_manager.add_secret("OPENAI_API_KEY", OPENAI)
    settings_env(**PRODUCTION, LLM_PROVIDER="auto")

    with pytest.raises(ConfigError) as info:
        get_settings()

    message = str(info.value)
    assert "JWT_SECRET" in message
    assert "OPENAI_API_KEY" not in message  # it was found in Secret Manager
    assert OPENAI not in message


def test_production_starts_when_secret_manager_holds_every_secret(secret_manager, settings_env):
    secret_manager.add_secret("JWT_SECRET", JWT)
    secret_manager.add_secret("OPENAI_API_KEY", OPENAI)
    settings_env(**PRODUCTION, LLM_PROVIDER="auto")

    settings = get_settings()

    assert settings.is_production
    assert settings.jwt_secret.get_secret_value() == JWT


def test_secret_with_no_versions_is_treated_as_absent(secret_manager, settings_env):
    secret_manager.add_secret("JWT_SECRET")  # listed, but access answers 404
    settings_env(**PRODUCTION, LLM_PROVIDER="offline")

    with pytest.raises(ConfigError, match="JWT_SECRET is missing"):
        get_settings()
    assert any(p.endswith("JWT_SECRET/versions/latest:access") for p in secret_manager.paths())


def test_payload_failing_its_crc32c_check_is_refused_and_logged(
    secret_manager, settings_env, caplog
):
    secret_manager.add_secret("JWT_SECRET", JWT, corrupt=True)
    settings_env(**PRODUCTION, LLM_PROVIDER="offline")

    with caplog.at_level(logging.WARNING), pytest.raises(ConfigError, match="JWT_SECRET"):
        get_settings()

    warnings = [r.getMessage() for r in caplog.records if "CRC32C" in r.getMessage()]
    assert warnings
    assert "JWT_SECRET/versions/1" in warnings[0]
    assert JWT not in caplog.text


def test_client_raises_not_found_from_googles_error_shape(secret_manager):
    client = secret_manager_client()

    with pytest.raises(NotFound, match="not found or has no versions"):
        client.access_secret_version(
            name=f"projects/{secret_manager.project}/secrets/NOPE/versions/latest"
        )


def test_client_reads_a_pinned_version_and_its_checksum(secret_manager):
    secret_manager.add_secret("JWT_SECRET", "v1-value", "v2-value")
    client = secret_manager_client()

    response = client.access_secret_version(
        name=f"projects/{secret_manager.project}/secrets/JWT_SECRET/versions/1"
    )

    assert response.payload.data == b"v1-value"
    assert (
        response.name == f"projects/{secret_manager.project_number}/secrets/JWT_SECRET/versions/1"
    )
    assert response.payload.data_crc32c > 0


def test_fake_pages_like_the_real_list_api():
    fake = FakeSecretManager(page_size=2)
    for name in ("A", "B", "C"):
        fake.add_secret(name, "x")

    status, first = fake.handle("GET", f"/v1/projects/{fake.project}/secrets")
    _, second = fake.handle("GET", f"/v1/projects/{fake.project}/secrets?pageToken=2")

    assert status == 200
    assert first["nextPageToken"] == "2"
    assert first["totalSize"] == 3
    assert [s["name"].rsplit("/", 1)[1] for s in second["secrets"]] == ["C"]
    assert "nextPageToken" not in second


def test_without_secret_manager_project_the_google_client_is_never_imported(tmp_path):
    # A fresh interpreter: this process has imported the client already.
    probe = (
        "import sys; from shared_layer.config import get_settings; get_settings(); "
        "print(sorted(m for m in sys.modules if 'secretmanager' in m or 'secret_manager' in m))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECRET_MANAGER")}
    env["SECRET_MANAGER_ENDPOINT"] = "http://127.0.0.1:9"

    result = subprocess.run(
        [sys.executable, "-c", probe], env=env, cwd=tmp_path, capture_output=True, text=True
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
