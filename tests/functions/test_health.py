"""The health function: component states, status codes, bounded checks, no secrets, lean imports."""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from shared_layer.health import DATABASE_CHECK_TIMEOUT_SECONDS, check_health
from shared_layer.migrate import downgrade, head_revision, upgrade
from tests.support.cold_imports import first_request_imports, migrated_sqlite

# What production needs besides the settings it refuses to start without, for an `ok` report.
PRODUCTION_EXTRAS = {
    "PUBSUB_MODE": "gcp",
    "GOOGLE_CLOUD_PROJECT": "stratus-prod",
    "SCHEDULER_SERVICE_ACCOUNT_EMAIL": "scheduler@stratus-prod.iam.gserviceaccount.com",
    "SCHEDULER_OIDC_AUDIENCE": "https://metrics-cleanup.example.run.app/",
}


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def fresh_database_url(
    backend: str, postgres_admin_url: str | None, tmp_path: Path
) -> Iterator[str]:
    """An empty database of this test's backend, separate from the shared migrated one."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    assert postgres_admin_url
    name = f"stratus_health_{uuid.uuid4().hex[:10]}"
    admin = create_engine(postgres_admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield postgres_admin_url.rsplit("/", 1)[0] + "/" + name
    finally:
        from shared_layer.database import reset_engine

        reset_engine()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_health_is_ok_on_a_migrated_database(db, client):
    r = client("health").get("/")
    assert r.status_code == 200, r.get_data(as_text=True)
    assert r.mimetype == "application/json"
    assert r.headers["Cache-Control"] == "no-store"
    body = r.json
    assert body["status"] == "ok"
    assert body["environment"] == "local"
    assert body["version"]
    assert body["checked_at"].endswith("Z") or body["checked_at"].endswith("+00:00")
    database = body["components"]["database"]
    assert database["status"] == "ok"
    assert database["dialect"] == db.dialect.name
    assert database["latency_ms"] >= 0
    migrations = body["components"]["migrations"]
    assert migrations == {"status": "ok", "current": head_revision(), "head": head_revision()}
    config = body["components"]["config"]
    assert config["status"] == "ok"
    assert config["problems"] == []
    assert "production" in config["note"]
    assert body["components"]["llm"] == {
        "status": "ok",
        "mode": "offline",
        "model": "gpt-4o-mini",
        "reachable": None,
        "detail": None,
    }
    pubsub = body["components"]["pubsub"]
    assert (pubsub["status"], pubsub["mode"], pubsub["topic"]) == ("ok", "local", None)


def test_health_is_down_with_503_promptly_when_the_database_port_is_closed(settings_env, client):
    settings_env(DATABASE_URL=f"postgresql+pg8000://postgres@127.0.0.1:{_closed_port()}/x")
    started = time.monotonic()
    r = client("health").get("/")
    elapsed = time.monotonic() - started
    assert r.status_code == 503, r.get_data(as_text=True)
    assert r.mimetype == "application/json"  # the report itself, not a problem document
    body = r.json
    assert body["status"] == "down"
    database = body["components"]["database"]
    assert database["status"] == "down"
    assert database["dialect"] == "postgresql"
    assert database["latency_ms"] is None
    assert database["detail"]  # says why
    assert body["components"]["migrations"]["status"] == "unknown"
    assert body["components"]["config"]["status"] == "ok"  # the other components still report
    assert elapsed < DATABASE_CHECK_TIMEOUT_SECONDS


def test_database_check_gives_up_at_its_deadline_when_the_server_never_answers(settings_env):
    # A listener that never accepts: TCP connects, the PostgreSQL handshake never comes back.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        settings_env(DATABASE_URL=f"postgresql+pg8000://postgres@127.0.0.1:{port}/x")
        started = time.monotonic()
        report = check_health(timeout=0.5)
        elapsed = time.monotonic() - started
    assert report.status == "down"
    assert report.components.database.detail == "the database did not answer within 0.5 s"
    assert elapsed < 3


def test_health_is_degraded_when_the_database_is_behind_head(
    fresh_database_url, settings_env, client
):
    """Migrated to head then downgraded to base: the revision is older than this code's head."""
    from shared_layer.database import build_engine

    engine = build_engine(fresh_database_url)
    upgrade(engine)
    downgrade(engine, "base")
    engine.dispose()
    settings_env(DATABASE_URL=fresh_database_url)
    r = client("health").get("/")
    assert r.status_code == 200, r.get_data(as_text=True)
    assert r.json["status"] == "degraded"
    assert r.json["components"]["database"]["status"] == "ok"
    assert r.json["components"]["migrations"] == {
        "status": "behind",
        "current": None,
        "head": head_revision(),
    }


def test_health_is_degraded_when_the_database_was_never_migrated(
    fresh_database_url, settings_env, client
):
    settings_env(DATABASE_URL=fresh_database_url)
    r = client("health").get("/")
    assert r.status_code == 200
    assert r.json["status"] == "degraded"
    assert r.json["components"]["migrations"]["status"] == "behind"
    assert r.json["components"]["migrations"]["current"] is None


def test_health_is_degraded_when_the_database_has_a_revision_this_code_does_not_know(
    fresh_database_url, settings_env, client
):
    from shared_layer.database import build_engine

    engine = build_engine(fresh_database_url)
    upgrade(engine)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'f00dfeed'"))
    engine.dispose()
    settings_env(DATABASE_URL=fresh_database_url)
    r = client("health").get("/")
    assert r.status_code == 200
    assert r.json["status"] == "degraded"
    assert r.json["components"]["migrations"] == {
        "status": "unknown",
        "current": "f00dfeed",
        "head": head_revision(),
    }


def test_health_names_production_config_problems_and_is_down(db, settings_env, client):
    # Production refuses this configuration, so no function can serve: down, not degraded.
    settings_env(STRATUS_ENV="production", JWT_SECRET="change-me", LLM_PROVIDER="auto")
    r = client("health").get("/")
    assert r.status_code == 503, r.get_data(as_text=True)
    body = r.json
    assert body["status"] == "down"
    assert body["environment"] == "production"
    config = body["components"]["config"]
    assert config["status"] == "error"
    assert any(p.startswith("JWT_SECRET") for p in config["problems"])
    assert any(p.startswith("OPENAI_API_KEY") for p in config["problems"])
    assert ("DATABASE_URL" in " ".join(config["problems"])) == (db.dialect.name == "sqlite")
    assert "change-me" not in r.get_data(as_text=True)
    # production refuses this configuration, so the database is not reached through it
    assert body["components"]["database"]["status"] == "unknown"


def test_health_is_ok_in_production_with_a_complete_configuration(pg, settings_env, client):
    settings_env(STRATUS_ENV="production", LLM_PROVIDER="offline", **PRODUCTION_EXTRAS)
    r = client("health").get("/")
    assert r.status_code == 200, r.get_data(as_text=True)
    assert r.json["status"] == "ok"
    assert r.json["components"]["config"] == {
        "status": "ok",
        "problems": [],
        "warnings": [],
        "note": None,
    }
    assert r.json["components"]["pubsub"] == {
        "status": "ok",
        "mode": "gcp",
        "topic": "projects/stratus-prod/topics/stratus-tasks",
        "detail": None,
    }


def test_llm_component_reports_mode_and_model_without_calling_it(db, settings_env, client):
    # Port 9 (discard) answers nothing: a probe would fail, so "ok" proves there was none.
    settings_env(LLM_PROVIDER="openai", OPENAI_BASE_URL="http://127.0.0.1:9/v1", OPENAI_MODEL="m-1")
    r = client("health").get("/")
    llm = r.json["components"]["llm"]
    assert (llm["status"], llm["mode"], llm["model"], llm["reachable"]) == (
        "ok",
        "openai",
        "m-1",
        None,
    )
    assert r.json["status"] == "ok"


def test_llm_forced_to_openai_without_key_or_url_is_degraded(db, settings_env, client):
    settings_env(LLM_PROVIDER="openai")
    r = client("health").get("/")
    assert r.status_code == 200
    assert r.json["components"]["llm"]["status"] == "error"
    assert r.json["status"] == "degraded"


@pytest.mark.parametrize("environment", ["local", "production"])
def test_health_never_returns_a_secret_value(environment, settings_env, client):
    secrets = {
        "JWT_SECRET": "jwt-" + uuid.uuid4().hex,
        "OPENAI_API_KEY": "sk-" + uuid.uuid4().hex,
        "STRIPE_SECRET_KEY": "sk_test_" + uuid.uuid4().hex,
        "STRIPE_WEBHOOK_SECRET": "whsec_" + uuid.uuid4().hex,
        "SENDGRID_API_KEY": "SG." + uuid.uuid4().hex,
        "DB_PASSWORD": "dbpw-" + uuid.uuid4().hex,
    }
    url_password = "urlpw-" + uuid.uuid4().hex
    settings_env(
        STRATUS_ENV=environment,
        LLM_PROVIDER="auto",
        DATABASE_URL=f"postgresql+pg8000://postgres:{url_password}@127.0.0.1:{_closed_port()}/x",
        **secrets,
    )
    r = client("health").get("/")
    text_ = r.get_data(as_text=True)
    assert r.json["status"] == "down"  # the failure detail is in the body, and still clean
    assert r.json["components"]["llm"]["mode"] == "openai"
    for value in [*secrets.values(), url_password]:
        assert value not in text_


@pytest.fixture
def unreachable_google_credentials(tmp_path: Path) -> Iterator[Path]:
    """A service-account key whose token endpoint refuses connections (no Google here)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path = tmp_path / "service-account.json"
    path.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": "stratus-health",
                "private_key_id": "k1",
                "private_key": key.decode(),
                "client_email": "health@stratus-health.iam.gserviceaccount.com",
                "client_id": "1",
                "token_uri": f"http://127.0.0.1:{_closed_port()}/token",
            }
        )
    )
    yield path
    from shared_layer.dbapi import reset_cloud_sql_connector

    reset_cloud_sql_connector()


def test_with_cloud_sql_the_probe_goes_through_the_connector(
    settings_env, client, unreachable_google_credentials
):
    """CLOUD_SQL_INSTANCE set: the probe connects through the Cloud SQL connector, whose first
    step (a token for the service account) fails here; reported as the database down, with the
    reason and without the password."""
    settings_env(
        CLOUD_SQL_INSTANCE="stratus-health:europe-west1:stratus",
        DB_PASSWORD="dbpw-" + uuid.uuid4().hex,
        GOOGLE_APPLICATION_CREDENTIALS=str(unreachable_google_credentials),
        MONITORING_ENABLED="false",  # the request's metric row would try Cloud SQL too
    )
    r = client("health").get("/")
    assert r.status_code == 503, r.get_data(as_text=True)
    database = r.json["components"]["database"]
    assert (database["status"], database["dialect"]) == ("down", "postgresql")
    assert "/token" in database["detail"]  # the connector asked for credentials
    assert os.environ["DB_PASSWORD"] not in r.get_data(as_text=True)


def test_head_answers_the_status_without_a_body(db, client):
    r = client("health").head("/")
    assert r.status_code == 200
    assert r.get_data() == b""


def test_other_methods_are_405_problems_naming_the_allowed_ones(client):
    r = client("health").post("/", json={})
    assert r.status_code == 405
    assert r.mimetype == "application/problem+json"
    assert r.json["allowed"] == ["GET", "HEAD"]
    assert r.headers["Allow"] == "GET, HEAD"


def test_unknown_path_is_a_404_problem(client):
    r = client("health").get("/metrics/nope")
    assert r.status_code == 404
    assert r.mimetype == "application/problem+json"
    assert "/metrics/nope" in r.json["detail"]


def test_health_report_imports_no_sqlalchemy_alembic_models_openai_pubsub_or_stripe(tmp_path):
    """The report probes the database through the DBAPI and reads the head from the migration
    files, and its API-call metric is only queued: a cold health check loads none of these."""
    url = migrated_sqlite(tmp_path)

    cold = first_request_imports(
        "health", env={"DATABASE_URL": url, "LOG_LEVEL": "ERROR"}, cwd=tmp_path
    )

    assert cold.status == 200, cold.body  # the function really ran, and read the revision
    assert json.loads(cold.body)["components"]["migrations"]["status"] == "ok"
    heavy = (
        "sqlalchemy",
        "alembic",
        "mako",
        "shared_layer.models",
        "shared_layer.database",
        "openai",
        "stripe",
        "google.cloud.pubsub",
        "google.cloud.secretmanager",
        "grpc",
    )
    assert cold.loaded(heavy) == []


# -- Pub/Sub, the production LLM probe, incomplete production settings ---------------------


def test_pubsub_in_gcp_mode_without_a_project_is_degraded(db, settings_env, client):
    settings_env(PUBSUB_MODE="gcp")
    r = client("health").get("/")
    assert r.status_code == 200
    assert r.json["status"] == "degraded"
    pubsub = r.json["components"]["pubsub"]
    assert (pubsub["status"], pubsub["mode"], pubsub["topic"]) == ("error", "gcp", None)
    assert "GOOGLE_CLOUD_PROJECT" in pubsub["detail"]


def test_local_pubsub_in_production_is_degraded_because_tasks_reach_no_runner(
    pg, settings_env, client
):
    settings_env(STRATUS_ENV="production", LLM_PROVIDER="offline", **PRODUCTION_EXTRAS)
    settings_env(PUBSUB_MODE="local")
    r = client("health").get("/")
    assert r.status_code == 200
    assert r.json["status"] == "degraded"
    assert r.json["components"]["pubsub"]["status"] == "error"
    assert "production" in r.json["components"]["pubsub"]["detail"]


def test_production_without_the_scheduler_identity_is_incomplete_and_degraded(
    pg, settings_env, client
):
    extras = {**PRODUCTION_EXTRAS, "SCHEDULER_SERVICE_ACCOUNT_EMAIL": None}
    settings_env(STRATUS_ENV="production", LLM_PROVIDER="offline", **extras)
    r = client("health").get("/")
    assert r.status_code == 200
    assert r.json["status"] == "degraded"
    config = r.json["components"]["config"]
    assert config["status"] == "incomplete"
    assert config["problems"] == []
    assert "SCHEDULER_SERVICE_ACCOUNT_EMAIL" in config["warnings"][0]


def test_production_probes_the_llm_api_once_per_ttl(pg, fake_openai, settings_env, client):
    from shared_layer.llm_probe import forget_probes

    forget_probes()
    settings_env(STRATUS_ENV="production", OPENAI_API_KEY="sk-" + "k" * 40, **PRODUCTION_EXTRAS)
    first = client("health").get("/")
    second = client("health").get("/")
    assert first.status_code == second.status_code == 200, first.get_data(as_text=True)
    llm = first.json["components"]["llm"]
    assert (llm["status"], llm["mode"], llm["reachable"], llm["detail"]) == (
        "ok",
        "openai",
        True,
        None,
    )
    probes = [r for r in fake_openai.requests if r.method == "GET"]
    assert [r.path for r in probes] == ["/v1/models"]  # the second report used the cache
    assert probes[0].headers["Authorization"] == "Bearer sk-" + "k" * 40
    assert not fake_openai.chat_requests()  # no tokens spent
    forget_probes()


def test_production_reports_an_unreachable_llm_as_degraded_without_the_key(
    pg, settings_env, client
):
    from shared_layer.llm_probe import forget_probes

    forget_probes()
    key = "sk-" + uuid.uuid4().hex
    settings_env(
        STRATUS_ENV="production",
        LLM_PROVIDER="openai",
        OPENAI_API_KEY=key,
        OPENAI_BASE_URL=f"http://127.0.0.1:{_closed_port()}/v1",
        **PRODUCTION_EXTRAS,
    )
    r = client("health").get("/")
    assert r.status_code == 200
    assert r.json["status"] == "degraded"
    llm = r.json["components"]["llm"]
    assert (llm["status"], llm["reachable"]) == ("error", False)
    assert "did not answer" in llm["detail"]
    assert key not in r.get_data(as_text=True)
    forget_probes()
