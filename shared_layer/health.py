"""Component health for the `health` function: database, migrations, configuration, LLM, Pub/Sub.

Health must answer when everything else is broken, so nothing here may hang or raise: the
database probe runs on a daemon thread with a deadline (a black-holed host would otherwise
hold the request for the TCP timeout), a configuration that production refuses is still
read (leniently) so that its problems can be named, and every message that leaves this
module has the configured secrets redacted. The LLM is reported by mode; in production (the
cloud) its API is also probed with a free `GET /models`, cached (shared_layer/llm_probe.py),
never through `openai`. Pub/Sub is reported as configured or not: building the client would
import gRPC, and publishing a test message would start a task run.

Health must also start fast: uptime checks and load balancers call it, often on a cold
instance. So the report imports neither SQLAlchemy nor Alembic (together they cost more import
time than the rest of a health cold start): the probe opens a plain DBAPI connection to the
configured database (shared_layer/dbapi.py: sqlite3, pg8000 or the Cloud SQL connector, with
the probe's timeout), runs `SELECT 1` and reads `alembic_version` itself, and the head revision
comes from the migration files (shared_layer/migration_files.py; a test holds it equal to
Alembic's). Each check opens a connection and closes it: a pool would outlive the check, and
could answer from a connection the database has since dropped.

Overall status: `down` when the database does not answer or production refuses the
configuration (either way no function can serve), `degraded` when any other component is
not `ok`, else `ok`.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Literal

from pydantic import BaseModel, SecretStr

from shared_layer import dbapi
from shared_layer.config import ConfigError, Settings, get_settings
from shared_layer.config_checks import production_problems
from shared_layer.migration_files import migration_graph

logger = logging.getLogger(__name__)

DATABASE_CHECK_TIMEOUT_SECONDS = 5.0
_DETAIL_MAX_CHARS = 300

OverallStatus = Literal["ok", "degraded", "down"]


class DatabaseHealth(BaseModel):
    status: Literal["ok", "down", "unknown"]
    latency_ms: float | None
    dialect: str
    detail: str | None = None


class MigrationsHealth(BaseModel):
    status: Literal["ok", "behind", "unknown"]
    current: str | None
    head: str | None


class ConfigHealth(BaseModel):
    status: Literal["ok", "incomplete", "error"]
    problems: list[str]
    warnings: list[str] = []
    note: str | None = None


class LlmHealth(BaseModel):
    status: Literal["ok", "error"]
    mode: Literal["offline", "openai"]
    model: str
    reachable: bool | None = None  # probed in production only
    detail: str | None = None


class PubSubHealth(BaseModel):
    status: Literal["ok", "error"]
    mode: Literal["local", "gcp"]
    topic: str | None
    detail: str | None = None


class HealthComponents(BaseModel):
    database: DatabaseHealth
    migrations: MigrationsHealth
    config: ConfigHealth
    llm: LlmHealth
    pubsub: PubSubHealth


class HealthReport(BaseModel):
    status: OverallStatus
    checked_at: datetime
    version: str
    environment: Literal["local", "production"]
    components: HealthComponents


@dataclass
class _Probe:
    """What the probe thread found; `done` stays False when the deadline passed first."""

    done: bool = False
    latency_ms: float | None = None
    current: str | None = None
    error: str | None = None


def check_health(*, timeout: float = DATABASE_CHECK_TIMEOUT_SECONDS) -> HealthReport:
    """Every component's state; never raises, never takes much longer than `timeout`."""
    settings, refused = _load_settings()
    config = _check_config(settings, refused=refused)
    if refused:
        database = DatabaseHealth(
            status="unknown",
            latency_ms=None,
            dialect=_dialect(settings),
            detail="not checked: production refuses this configuration (see config.problems)",
        )
        migrations = MigrationsHealth(status="unknown", current=None, head=_head())
    else:
        database, migrations = _check_database(settings, timeout=timeout)
    llm = _check_llm(settings)
    pubsub = _check_pubsub(settings)
    status: OverallStatus = "ok"
    if database.status == "down" or refused:
        status = "down"
    elif any(c.status != "ok" for c in (database, migrations, config, llm, pubsub)):
        status = "degraded"
    return HealthReport(
        status=status,
        checked_at=datetime.now(UTC),
        version=_version(),
        environment=settings.environment,
        components=HealthComponents(
            database=database, migrations=migrations, config=config, llm=llm, pubsub=pubsub
        ),
    )


def _load_settings() -> tuple[Settings, bool]:
    """The settings, and whether production refuses them (then read without the check)."""
    try:
        return get_settings(), False
    except ConfigError:
        return Settings(), True


def _check_config(settings: Settings, *, refused: bool) -> ConfigHealth:
    if not settings.is_production:
        return ConfigHealth(
            status="ok",
            problems=[],
            note="production checks apply only when STRATUS_ENV=production",
        )
    problems = production_problems(settings)
    warnings = _production_warnings(settings)
    status: Literal["ok", "incomplete", "error"] = "ok"
    if problems or refused:
        status = "error"
    elif warnings:
        status = "incomplete"
    return ConfigHealth(status=status, problems=problems, warnings=warnings)


def _production_warnings(settings: Settings) -> list[str]:
    """What production runs without but should not: it serves, degraded."""
    warnings = []
    if not (settings.scheduler_service_account_email and settings.scheduler_oidc_audience):
        warnings.append(
            "SCHEDULER_SERVICE_ACCOUNT_EMAIL and SCHEDULER_OIDC_AUDIENCE are not both set: "
            "metrics_cleanup accepts only admins, so Cloud Scheduler's runs are refused"
        )
    return warnings


def _check_llm(settings: Settings) -> LlmHealth:
    mode = settings.llm_mode
    usable = mode == "offline" or bool(settings.openai_api_key or settings.openai_base_url)
    health = LlmHealth(status="ok" if usable else "error", mode=mode, model=settings.openai_model)
    if usable and mode == "openai" and settings.is_production:
        from shared_layer.llm_probe import llm_reachability

        probe = llm_reachability(settings)
        health.reachable = probe.reachable
        health.detail = _redact(probe.detail, settings) if probe.detail else None
        health.status = "ok" if probe.reachable else "error"
    return health


def _check_pubsub(settings: Settings) -> PubSubHealth:
    """Configured, not contacted (see the module docstring)."""
    if settings.pubsub_mode == "gcp":
        if not settings.gcp_project_id:
            detail = "GOOGLE_CLOUD_PROJECT is not set, so there is no topic to publish to"
            return PubSubHealth(status="error", mode="gcp", topic=None, detail=detail)
        topic = f"projects/{settings.gcp_project_id}/topics/{settings.tasks_topic}"
        return PubSubHealth(status="ok", mode="gcp", topic=topic)
    if settings.is_production and not settings.local_push_endpoint:
        detail = "PUBSUB_MODE=local in production: submitted tasks reach no task_runner"
        return PubSubHealth(status="error", mode="local", topic=None, detail=detail)
    target = settings.local_push_endpoint or "the task_runner in this process (local stack)"
    return PubSubHealth(status="ok", mode="local", topic=None, detail=f"local push to {target}")


def _check_database(
    settings: Settings, *, timeout: float
) -> tuple[DatabaseHealth, MigrationsHealth]:
    head = _head()
    dialect = _dialect(settings)
    probe = _Probe()
    worker = threading.Thread(
        target=_probe_database,
        args=(settings, dialect, probe, timeout),
        name="health-db-probe",
        daemon=True,
    )
    worker.start()
    worker.join(timeout)
    if not probe.done:
        detail = f"the database did not answer within {timeout:g} s"
        return _down(dialect, detail), MigrationsHealth(status="unknown", current=None, head=head)
    if probe.error is not None:
        detail = _redact(probe.error, settings)
        return _down(dialect, detail), MigrationsHealth(status="unknown", current=None, head=head)
    database = DatabaseHealth(status="ok", latency_ms=probe.latency_ms, dialect=dialect)
    return database, MigrationsHealth(
        status=_migration_status(probe.current, head), current=probe.current, head=head
    )


def _probe_database(settings: Settings, dialect: str, probe: _Probe, timeout: float) -> None:
    """Connect and SELECT 1 (timed together), then read the Alembic revision; runs on the
    probe thread."""
    try:
        started = time.perf_counter()
        connection = dbapi.connect(settings, timeout=timeout)
        try:
            cursor = connection.cursor()
            cursor.execute("SELECT 1")
            cursor.fetchall()
            probe.latency_ms = round((time.perf_counter() - started) * 1000, 2)
            probe.current = _current_revision(cursor, dialect)
        finally:
            connection.close()
    except Exception as exc:  # health reports every failure; it never raises
        probe.error = f"{type(exc).__name__}: {_first_line(exc)}"
    probe.done = True


# Whether the version table exists where the unqualified SELECT below looks for it.
_VERSION_TABLE_EXISTS = {
    "sqlite": "SELECT count(*) FROM sqlite_master WHERE type='table' AND name='alembic_version'",
    "postgresql": "SELECT to_regclass('alembic_version') IS NOT NULL",
}


def _current_revision(cursor: Any, dialect: str) -> str | None:
    """The Alembic revision, read as Alembic stores it; None before the first migration."""
    cursor.execute(_VERSION_TABLE_EXISTS[dialect])
    if not cursor.fetchone()[0]:
        return None
    cursor.execute("SELECT version_num FROM alembic_version")
    rows = [str(row[0]) for row in cursor.fetchall()]
    return ",".join(sorted(rows)) or None  # several rows only with several heads


def _down(dialect: str, detail: str) -> DatabaseHealth:
    return DatabaseHealth(status="down", latency_ms=None, dialect=dialect, detail=detail)


def _migration_status(current: str | None, head: str | None) -> Literal["ok", "behind", "unknown"]:
    if current is not None and current == head:
        return "ok"
    if current is None or current in _known_revisions():
        return "behind"
    return "unknown"  # a revision this code does not know: the database is newer, or foreign


def _head() -> str | None:
    try:
        return migration_graph().head
    except Exception:  # a migration file health cannot read: report no head rather than fail
        logger.exception("could not read the migration files' head revision")
        return None


def _known_revisions() -> frozenset[str]:
    try:
        return migration_graph().revisions
    except Exception:
        return frozenset()


def _dialect(settings: Settings) -> str:
    if settings.cloud_sql_instance:
        return "postgresql"
    try:
        return dbapi.backend_name(settings.database_url)
    except ValueError:  # a malformed URL is reported by the probe, not here
        return "unknown"


def _version() -> str:
    """`STRATUS_VERSION` (set by the build), else the installed package's, else unknown."""
    return os.environ.get("STRATUS_VERSION") or _installed_version()


@lru_cache(maxsize=1)
def _installed_version() -> str:
    """Looked up once: it scans the installed distributions (milliseconds per request)."""
    try:
        return importlib.metadata.version("stratus")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _first_line(exc: BaseException) -> str:
    """The first line of the error; for a PostgreSQL error (pg8000 carries the server's fields
    as a dict), its message."""
    fields = exc.args[0] if len(exc.args) == 1 else None
    if isinstance(fields, dict) and isinstance(fields.get("M"), str):
        message = fields["M"]
    else:
        message = str(exc).strip()
    return message.splitlines()[0] if message else ""


def _redact(message: str, settings: Settings) -> str:
    """The message with every configured secret (and the database URL's password) masked."""
    secrets = [
        value.get_secret_value()
        for value in vars(settings).values()
        if isinstance(value, SecretStr) and value.get_secret_value()
    ]
    password = dbapi.url_password(settings.database_url)
    if password:
        secrets.append(str(password))
    for secret in sorted(secrets, key=len, reverse=True):
        message = message.replace(secret, "***")
    return message[:_DETAIL_MAX_CHARS]
