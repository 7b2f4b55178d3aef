"""Fixtures shared by every test: databases (SQLite and PostgreSQL), settings, function clients.

PostgreSQL comes from `STRATUS_TEST_POSTGRES_URL` (default: the local server on 5432, database
`test`); where none answers, a throwaway server is started from the installed binaries; where
that is impossible too, the PostgreSQL half is skipped and says so — except under `CI=true`,
where a missing PostgreSQL fails the run.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.pool import NullPool

from tests.support.postgres import PostgresUnavailable, provide_postgres

ROOT = Path(__file__).resolve().parents[1]
FUNCTIONS = ROOT / "functions"

# Settings every test starts from; a test changes them with `settings_env`.
BASE_ENV = {
    "STRATUS_ENV": "local",
    "JWT_SECRET": "test-secret-" + "x" * 40,
    "BCRYPT_ROUNDS": "4",
    "LLM_PROVIDER": "offline",
    "PUBSUB_MODE": "local",
    "LOCAL_PUSH_MODE": "sync",
    "LOG_LEVEL": "INFO",
    "MONITORING_BATCH_SIZE": "1",  # each API-call metric is written when its request ends
}
_UNSET = (
    "REDIS_URL",
    "TRUSTED_PROXY_HOPS",
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "SECRET_MANAGER_PROJECT",
    "CLOUD_SQL_INSTANCE",
    "LOCAL_PUSH_ENDPOINT",
    "GOOGLE_CLOUD_PROJECT",
    "PUBSUB_EMULATOR_HOST",
    # billing and email: a developer's real keys must never be used by a test
    "STRIPE_SECRET_KEY",
    "STRIPE_WEBHOOK_SECRET",
    "STRIPE_API_BASE",
    "STRIPE_PRICE_PRO",
    "STRIPE_PRICE_TEAM",
    "BILLING_PLANS",
    "EMAIL_BACKEND",
    "SENDGRID_API_KEY",
    "SENDGRID_API_BASE",
    "SENDGRID_WEBHOOK_PUBLIC_KEY",
)


def pytest_configure(config: pytest.Config) -> None:
    os.chdir(ROOT / "tests")  # no stray .env from the working tree leaks into settings


@pytest.fixture(scope="session")
def postgres_admin_url() -> Iterator[str | None]:
    try:
        with provide_postgres() as url:
            yield url
    except PostgresUnavailable as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL is required under CI=true: {exc}")
        yield None


def _reset_runtime() -> None:
    from shared_layer.config import reset_settings
    from shared_layer.database import reset_engine
    from shared_layer.redis_client import reset_redis
    from shared_layer.services.sessions import forget_checked_sessions
    from shared_layer.throttle import reset_throttle

    reset_settings()
    reset_engine()
    reset_throttle()
    reset_redis()
    forget_checked_sessions()
    try:
        from shared_layer.pubsub import reset_publisher
    except ImportError:  # pragma: no cover - before the publisher exists
        return
    reset_publisher()


@pytest.fixture(scope="session")
def _migrated_databases(
    tmp_path_factory: pytest.TempPathFactory, postgres_admin_url: str | None
) -> Iterator[dict[str, str | None]]:
    """One migrated database per backend for the whole session; tests empty it after use."""
    from shared_layer.database import build_engine
    from shared_layer.migrate import upgrade

    sqlite_url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'stratus.db'}"
    urls: dict[str, str | None] = {"sqlite": sqlite_url, "postgresql": None}
    created: str | None = None
    if postgres_admin_url:
        created = f"stratus_test_{uuid.uuid4().hex[:10]}"
        admin = create_engine(postgres_admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{created}"'))
        urls["postgresql"] = postgres_admin_url.rsplit("/", 1)[0] + "/" + created
    for url in urls.values():
        if url:
            engine = build_engine(url)
            upgrade(engine)
            engine.dispose()
    yield urls
    if created and postgres_admin_url:
        _reset_runtime()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{created}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def settings_env(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Set environment variables and rebuild settings, engine and publisher from them."""

    def apply(**values: str | None) -> None:
        for key, value in values.items():
            if value is None:
                monkeypatch.delenv(key, raising=False)
            else:
                monkeypatch.setenv(key, value)
        _reset_runtime()

    return apply


@pytest.fixture(autouse=True)
def _base_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for key, value in BASE_ENV.items():
        monkeypatch.setenv(key, value)
    for key in _UNSET:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("DATABASE_URL", "sqlite:///:memory:")
    _reset_runtime()
    yield
    _reset_runtime()


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, _migrated_databases: dict[str, str | None]) -> str:
    if request.param == "postgresql" and not _migrated_databases["postgresql"]:
        pytest.skip("PostgreSQL is not available here (see tests/conftest.py); SQLite half ran")
    return str(request.param)


@pytest.fixture
def db(
    backend: str,
    _migrated_databases: dict[str, str | None],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Engine]:
    """The configured database for this test (SQLite or PostgreSQL), emptied afterwards."""
    from shared_layer.database import get_engine

    url = _migrated_databases[backend]
    assert url
    monkeypatch.setenv("DATABASE_URL", url)
    _reset_runtime()
    engine = get_engine()
    yield engine
    _empty_tables(engine)


@pytest.fixture
def pg(
    _migrated_databases: dict[str, str | None], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Engine]:
    """PostgreSQL only, for the concurrency tests."""
    from shared_layer.database import get_engine

    url = _migrated_databases["postgresql"]
    if not url:
        pytest.skip("PostgreSQL is not available here (see tests/conftest.py)")
    monkeypatch.setenv("DATABASE_URL", url)
    _reset_runtime()
    engine = get_engine()
    yield engine
    _empty_tables(engine)


def _empty_tables(engine: Engine) -> None:
    from shared_layer.models import Base

    tables = [t.name for t in reversed(Base.metadata.sorted_tables)]
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " CASCADE"))
        else:
            for table in tables:
                conn.execute(text(f'DELETE FROM "{table}"'))


# Every request, good or bad, is recorded here by design: not part of "the database unchanged".
METRIC_TABLES = frozenset({"api_call_metrics", "task_metrics"})


def table_counts(engine: Engine) -> dict[str, int]:
    """Rows per table (the metrics tables aside): tests compare it before and after a bad
    request."""
    from shared_layer.models import Base

    with engine.connect() as conn:
        return {
            t.name: int(conn.execute(text(f'SELECT count(*) FROM "{t.name}"')).scalar_one())
            for t in Base.metadata.sorted_tables
            if t.name not in METRIC_TABLES
        }


_apps: dict[str, Any] = {}


def function_app(name: str) -> Any:
    """The function's app as functions-framework builds it; one per function per session."""
    import functions_framework

    if name not in _apps:
        _apps[name] = functions_framework.create_app(
            target=name, source=str(FUNCTIONS / name / "main.py")
        )
    return _apps[name]


@pytest.fixture
def client() -> Callable[[str], Any]:
    """`client("auth")`: a test client of that function through functions-framework.

    Every response of a documented function is checked against docs/openapi.yaml, so each
    test that calls a route also proves the document describes what the route answers.
    """
    from tests.support.openapi import validating_client_factory

    return validating_client_factory(function_app)


@pytest.fixture
def secret_manager(settings_env: Callable[..., None]) -> Iterator[Any]:
    """A fake Secret Manager on loopback that settings read from (SECRET_MANAGER_PROJECT set)."""
    from tests.support.fake_secret_manager import serve_secret_manager

    with serve_secret_manager() as fake:
        settings_env(SECRET_MANAGER_PROJECT=fake.project, SECRET_MANAGER_ENDPOINT=fake.url)
        yield fake


@pytest.fixture
def fake_openai(settings_env: Callable[..., None]) -> Iterator[Any]:
    """A loopback OpenAI API that settings point at (LLM_PROVIDER=openai, no client retries)."""
    from tests.support.fake_openai import FakeOpenAIServer

    with FakeOpenAIServer() as server:
        settings_env(
            LLM_PROVIDER="openai",
            OPENAI_BASE_URL=server.base_url,
            OPENAI_API_KEY="test-key",
            OPENAI_MAX_RETRIES="0",
        )
        yield server


class QueuedTask(NamedTuple):
    task_id: uuid.UUID
    agent_id: uuid.UUID
    owner_id: uuid.UUID


@pytest.fixture
def queued_task() -> Callable[..., QueuedTask]:
    """`queued_task("input", system="enhanced", ...)`: a queued task of a new user's new agent
    (keywords set agent columns), or of `agent=` an existing QueuedTask's agent. Needs `db`/`pg`."""
    from shared_layer.database import session_scope
    from shared_layer.models import Agent, Task, User

    def make(
        input: str = "Say hello", *, agent: QueuedTask | None = None, **columns: Any
    ) -> QueuedTask:
        with session_scope() as session:
            if agent is None:
                user = User(email=f"owner-{uuid.uuid4().hex[:12]}@example.com", password_hash="x")
                session.add(user)
                session.flush()
                new_agent = Agent(owner_id=user.id, name=f"agent-{uuid.uuid4().hex[:8]}", **columns)
                session.add(new_agent)
                session.flush()
                owner_id, agent_id = user.id, new_agent.id
            else:
                owner_id, agent_id = agent.owner_id, agent.agent_id
            task = Task(agent_id=agent_id, owner_id=owner_id, input=input)
            session.add(task)
            session.flush()
            return QueuedTask(task.id, agent_id, owner_id)

    return make


@pytest.fixture
def push_to_task_runner() -> Iterator[list[int]]:
    """Local Pub/Sub pushes to task_runner's app in-process; yields the statuses it answered."""
    from shared_layer.pubsub import set_local_push_target

    statuses: list[int] = []

    def push(headers: dict[str, str], body: bytes) -> int:
        response = function_app("task_runner").test_client().post("/", headers=headers, data=body)
        statuses.append(response.status_code)
        return response.status_code

    set_local_push_target(push)
    yield statuses
    set_local_push_target(None)


@pytest.fixture
def json_logs() -> Iterator[list[dict[str, Any]]]:
    """Every log line emitted during the test, as the JSON the functions write (with context)."""
    import json
    import logging

    from shared_layer.logging_config import JsonFormatter

    lines: list[dict[str, Any]] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:  # formats now: the context is live
            lines.append(json.loads(JsonFormatter().format(record)))

    handler = Capture(level=logging.DEBUG)
    root = logging.getLogger()
    root.addHandler(handler)
    yield lines
    root.removeHandler(handler)


USER_PASSWORD = "s3cret-pass-1"


def bearer_for(user_id: uuid.UUID) -> str:
    """ "Bearer <access token>" of a new session of an existing, active user, as a sign-in
    would open it (in the database the test configured)."""
    from shared_layer.services.accounts import get_active_user, start_session
    from shared_layer.sql import transaction

    with transaction() as db:
        user = get_active_user(db, user_id=user_id)
        pair = start_session(db, user=user, user_agent="pytest", ip_address="127.0.0.1")
    return "Bearer " + pair.access_token


@pytest.fixture
def user_token() -> Callable[..., tuple[uuid.UUID, str]]:
    """`user_token()` -> (user_id, "Bearer <access token>") for a new user, signed in.

    The user is created in the database the test configured (request `db` or `pg` too), with
    password `USER_PASSWORD`; pass `email=` to choose the address.
    """
    from shared_layer.auth import hash_password
    from shared_layer.database import session_scope
    from shared_layer.models import User

    def make(email: str | None = None) -> tuple[uuid.UUID, str]:
        email = email or f"user-{uuid.uuid4().hex[:12]}@example.com"
        with session_scope() as session:
            user = User(email=email, password_hash=hash_password(USER_PASSWORD))
            session.add(user)
            session.flush()
            user_id = user.id
        return user_id, bearer_for(user_id)

    return make


STRIPE_WEBHOOK_SECRET = "whsec_test_" + "s" * 32


@pytest.fixture
def stripe_settings(settings_env: Callable[..., None]) -> None:
    """Prices for pro (`price_pro`) and team (`price_team`), and the webhook signing secret
    `STRIPE_WEBHOOK_SECRET`, as the stripe_webhook function needs them."""
    settings_env(
        STRIPE_PRICE_PRO="price_pro",
        STRIPE_PRICE_TEAM="price_team",
        STRIPE_WEBHOOK_SECRET=STRIPE_WEBHOOK_SECRET,
    )


@pytest.fixture
def fake_stripe(settings_env: Callable[..., None], stripe_settings: None) -> Iterator[Any]:
    """A loopback Stripe API that settings point at (no client retries), plus `stripe_settings`."""
    from tests.support.fake_stripe import FakeStripeServer

    with FakeStripeServer(api_key="sk_test_stratus") as server:
        settings_env(
            STRIPE_SECRET_KEY=server.api_key,
            STRIPE_API_BASE=server.base_url,
            STRIPE_MAX_NETWORK_RETRIES="0",
        )
        yield server


@pytest.fixture
def fake_sendgrid(settings_env: Callable[..., None]) -> Iterator[Any]:
    """A loopback SendGrid v3 Mail Send API that email goes to (EMAIL_BACKEND=sendgrid)."""
    from tests.support.fake_sendgrid import FakeSendGridServer

    with FakeSendGridServer() as server:
        settings_env(
            EMAIL_BACKEND="sendgrid",
            SENDGRID_API_KEY=server.api_key,
            SENDGRID_API_BASE=server.base_url,
        )
        yield server


@pytest.fixture
def sendgrid_signer(settings_env: Callable[..., None]) -> Any:
    """An `EventSigner` with a key made for this test, whose public key settings trust."""
    from tests.support.fake_sendgrid import EventSigner

    signer = EventSigner()
    settings_env(SENDGRID_WEBHOOK_PUBLIC_KEY=signer.public_key)
    return signer


SCHEDULER_EMAIL = "stratus-scheduler@stratus-test.iam.gserviceaccount.com"
SCHEDULER_AUDIENCE = "https://metrics-cleanup-test.a.run.app/"


@pytest.fixture
def scheduler_identity(settings_env: Callable[..., None]) -> Iterator[Any]:
    """A loopback Google certificate endpoint that settings verify OIDC ID tokens against, with
    SCHEDULER_SERVICE_ACCOUNT_EMAIL / SCHEDULER_OIDC_AUDIENCE set; `.mint(...)` makes tokens and
    `.token()` the one Cloud Scheduler would send."""
    from tests.support.fake_google_oidc import GoogleCerts

    with GoogleCerts() as google:
        settings_env(
            GOOGLE_OIDC_CERTS_URL=google.certs_url,
            SCHEDULER_SERVICE_ACCOUNT_EMAIL=SCHEDULER_EMAIL,
            SCHEDULER_OIDC_AUDIENCE=SCHEDULER_AUDIENCE,
        )
        google.token = lambda: google.mint(audience=SCHEDULER_AUDIENCE, email=SCHEDULER_EMAIL)
        yield google


@pytest.fixture
def admin_token(
    user_token: Callable[..., tuple[uuid.UUID, str]],
) -> Callable[..., tuple[uuid.UUID, str]]:
    """`admin_token()` -> (user_id, "Bearer ...") for a new user with `is_admin` set (needs db)."""
    from shared_layer.database import session_scope
    from shared_layer.models import User

    def make(email: str | None = None) -> tuple[uuid.UUID, str]:
        user_id, bearer = user_token(email)
        with session_scope() as session:
            user = session.get(User, user_id)
            assert user is not None
            user.is_admin = True
        return user_id, bearer

    return make


@pytest.fixture(scope="session")
def redis_url() -> str | None:
    """A Redis to test against: `STRATUS_TEST_REDIS_URL`, by default the local server's
    database 15; None (the Redis half is skipped) where none answers — except under `CI=true`,
    where a missing Redis fails the run."""
    url = os.environ.get("STRATUS_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.exceptions.RedisError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Redis is required under CI=true: {url} does not answer ({exc})")
        return None
    finally:
        client.close()
    return url


@pytest.fixture(params=["database", "redis"])
def throttle_store(
    request: pytest.FixtureRequest, redis_url: str | None, settings_env: Callable[..., None]
) -> Iterator[str]:
    """Where throttle counters live for this test: the database the test configured, or Redis
    (`REDIS_URL` set, its test database emptied before and after)."""
    if request.param == "database":
        yield "database"
        return
    if redis_url is None:
        pytest.skip("Redis is not available here (see tests/conftest.py); the database half ran")
    import redis

    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    settings_env(REDIS_URL=redis_url)
    yield "redis"
    client.flushdb()
    client.close()
