"""Component health for the `health` function: database, migrations, configuration, LLM, Pub/Sub.

Health must answer when everything else is broken, so nothing here may hang or raise: the
database probe runs on a daemon thread with a deadline (a black-holed host would otherwise
hold the request for the TCP timeout), a configuration that production refuses is still
read (leniently) so that its problems can be named, and every message that leaves this
module has the configured secrets redacted. The LLM is reported by mode; in production (the
cloud) its API is also probed with a free `GET /models`, cached (shared_layer/llm_probe.py),
never through `openai`. Pub/Sub is reported as configured or not: building the client would
import gRPC, and publishing a test message would start a task run.

Overall status: `down` when the database does not answer or production refuses the
configuration (either way no function can serve), `degraded` when any other component is
not `ok`, else `ok`.
"""

from __future__ import annotations

import importlib.metadata
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Literal

from pydantic import BaseModel, SecretStr
from sqlalchemy import Connection, Engine, inspect, text
from sqlalchemy.engine import make_url

from shared_layer.config import ConfigError, Settings, get_settings, production_problems

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
    from shared_layer.database import get_engine

    head = _head()
    dialect = _dialect(settings)
    probe = _Probe()
    worker = threading.Thread(
        target=_probe_database, args=(get_engine, probe), name="health-db-probe", daemon=True
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


def _probe_database(engine_factory: Callable[[], Engine], probe: _Probe) -> None:
    """SELECT 1 (timed) and the Alembic revision; runs on the probe thread."""
    try:
        engine = engine_factory()
        started = time.perf_counter()
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
            probe.latency_ms = round((time.perf_counter() - started) * 1000, 2)
            probe.current = _current_revision(connection)
    except Exception as exc:  # health reports every failure; it never raises
        probe.error = f"{type(exc).__name__}: {_first_line(exc)}"
    probe.done = True


def _current_revision(connection: Connection) -> str | None:
    """The Alembic revision, read directly: alembic's MigrationContext logs on every call."""
    if not inspect(connection).has_table("alembic_version"):
        return None
    rows = connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    return ",".join(sorted(rows)) or None  # several rows only with several heads


def _down(dialect: str, detail: str) -> DatabaseHealth:
    return DatabaseHealth(status="down", latency_ms=None, dialect=dialect, detail=detail)


def _migration_status(current: str | None, head: str | None) -> Literal["ok", "behind", "unknown"]:
    if current is not None and current == head:
        return "ok"
    if current is None or current in _known_revisions():
        return "behind"
    return "unknown"  # a revision this code does not know: the database is newer, or foreign


@lru_cache(maxsize=1)
def _head() -> str | None:
    from shared_layer.migrate import head_revision

    return head_revision()


@lru_cache(maxsize=1)
def _known_revisions() -> frozenset[str]:
    from alembic.script import ScriptDirectory

    from shared_layer.migrate import alembic_config

    script = ScriptDirectory.from_config(alembic_config())
    return frozenset(rev.revision for rev in script.walk_revisions())


def _dialect(settings: Settings) -> str:
    if settings.cloud_sql_instance:
        return "postgresql"
    try:
        return make_url(settings.database_url).get_backend_name()
    except Exception:  # a malformed URL is reported by the probe, not here
        return "unknown"


def _version() -> str:
    """`STRATUS_VERSION` (set by the build), else the installed package's, else unknown."""
    if os.environ.get("STRATUS_VERSION"):
        return os.environ["STRATUS_VERSION"]
    try:
        return importlib.metadata.version("stratus")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _first_line(exc: BaseException) -> str:
    # SQLAlchemy appends the statement and a documentation link on later lines.
    message = str(getattr(exc, "orig", None) or exc).strip()
    return message.splitlines()[0] if message else ""


def _redact(message: str, settings: Settings) -> str:
    """The message with every configured secret (and the database URL's password) masked."""
    secrets = [
        value.get_secret_value()
        for value in vars(settings).values()
        if isinstance(value, SecretStr) and value.get_secret_value()
    ]
    try:
        password = make_url(settings.database_url).password
    except Exception:
        password = None
    if password:
        secrets.append(str(password))
    for secret in sorted(secrets, key=len, reverse=True):
        message = message.replace(secret, "***")
    return message[:_DETAIL_MAX_CHARS]
