"""Each function's bundle runs alone: built by `stratus bundle`, installed into its own clean
virtual environment from its requirements.txt only (`--no-deps`, then `pip check`), started with
functions-framework as Cloud Functions starts it, and answering a real request with a 2xx.

The requests take the paths a deployment takes wherever a loopback peer can stand in for the
cloud: agents publishes through the real Pub/Sub client, task_runner calls the model through
shared_layer/llm_http.py, billing calls Stripe through `stripe`, metrics_cleanup verifies a
Google-signed OIDC token through google-auth, the webhooks check real signatures; every
function reads and writes PostgreSQL through pg8000 (SQLite where no PostgreSQL runs). And each
bundle goes to Cloud SQL the ways its code does on a first query, up to where Google would be
needed: the plain-SQL pool (shared_layer/sql.py) hands the instance to the connector, and a
function that uses SQLAlchemy builds its engine through the connector. A library missing from a
bundle, or code reaching outside it, fails here rather than in production; and a bundle carries
no requirement its code cannot import.

About a minute the first time: it fills the wheel cache (`STRATUS_WHEELHOUSE`, default
~/.cache/stratus/wheelhouse) from the package index and makes the environments, which later
runs reuse while they hold exactly the bundles' pins (stratus/bundle_env.py).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from stratus.bundle import Bundle, build_bundles, discover
from stratus.bundle_env import default_wheelhouse, ensure_wheels, pinned, venv_for
from stratus.import_graph import reach
from stratus.pins import distribution_of
from tests.conftest import BASE_ENV, ROOT

pytestmark = pytest.mark.deploy

FUNCTIONS = discover(ROOT)
START_TIMEOUT = 60.0
SCHEDULER_EMAIL = "stratus-scheduler@stratus-bundles.iam.gserviceaccount.com"
SCHEDULER_AUDIENCE = "https://europe-west1-stratus-bundles.cloudfunctions.net/metrics-cleanup"


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Bundle]:
    out = tmp_path_factory.mktemp("build")
    return {b.name: b for b in build_bundles(out=out, root=ROOT)}


@pytest.fixture(scope="module")
def venvs(bundles: dict[str, Bundle]) -> dict[str, Path]:
    """name -> the python of a virtual environment holding exactly that bundle's pins (made
    from its requirements.txt alone; kept between runs while it still holds exactly those)."""
    wheelhouse = default_wheelhouse()
    requirements = {name: b.directory / "requirements.txt" for name, b in bundles.items()}
    ensure_wheels({line for path in requirements.values() for line in pinned(path)}, wheelhouse)
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {n: pool.submit(venv_for, path, wheelhouse) for n, path in requirements.items()}
        return {name: future.result() for name, future in futures.items()}


@pytest.fixture(scope="module")
def bundle_database(
    postgres_admin_url: str | None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A migrated database the bundles share: PostgreSQL (through pg8000) where one runs."""
    from shared_layer.database import build_engine
    from shared_layer.migrate import upgrade

    if not postgres_admin_url:
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'bundles.db'}"
        engine = build_engine(url)
        upgrade(engine)
        engine.dispose()
        yield url
        return
    name = f"stratus_bundles_{uuid.uuid4().hex[:10]}"
    admin = create_engine(postgres_admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = postgres_admin_url.rsplit("/", 1)[0] + "/" + name
    engine = build_engine(url)
    upgrade(engine)
    engine.dispose()
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def shared_db(bundle_database: str, settings_env: Callable[..., None]) -> str:
    """This process uses the bundles' database too (to set up users, agents and tasks)."""
    settings_env(DATABASE_URL=bundle_database)
    return bundle_database


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def child_env(**settings: str) -> dict[str, str]:
    """Nothing from this process's environment but the basics: the bundle sees only its own."""
    env = {k: v for k, v in os.environ.items() if k in ("HOME", "LANG", "LC_ALL", "TMPDIR")}
    return {**env, "PATH": "/usr/local/bin:/usr/bin:/bin", **BASE_ENV, **settings}


@contextmanager
def serving(name: str, python: Path, bundle: Bundle, env: dict[str, str]) -> Iterator[str]:
    """`functions-framework --target NAME --source main.py` from the bundle's own directory and
    environment; the base URL once it listens."""
    port = _free_port()
    log = bundle.directory.parent / f"{name}.log"
    command = [str(python.with_name("functions-framework"))]
    command += ["--target", name, "--source", "main.py", "--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, cwd=bundle.directory, env=env, stdout=out, stderr=out, start_new_session=True
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if process.poll() is not None:
                pytest.fail(f"{name} exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"{name} did not listen in {START_TIMEOUT:.0f} s")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(process)


def _stop(process: subprocess.Popen[bytes]) -> None:
    try:
        # gunicorn's quick shutdown (SIGTERM waits for a graceful one), to the session this
        # test started, by its id
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=10)
    except ProcessLookupError:
        process.wait()
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@dataclass
class Probe:
    """A request to a function, the settings it runs with, and what must hold afterwards."""

    method: str
    path: str
    env: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    check: Callable[[requests.Response], None] = lambda response: None


ProbeMaker = Callable[[ExitStack, Any], Probe]
PROBES: dict[str, ProbeMaker] = {}


def probe(name: str) -> Callable[[ProbeMaker], ProbeMaker]:
    def register(make: ProbeMaker) -> ProbeMaker:
        PROBES[name] = make
        return make

    return register


def _json(payload: Any) -> tuple[dict[str, str], bytes]:
    return {"Content-Type": "application/json"}, json.dumps(payload).encode()


@probe("health")
def _health(stack: ExitStack, fx: Any) -> Probe:
    def check(response: requests.Response) -> None:
        assert response.json()["status"] in ("ok", "degraded")

    return Probe("GET", "/", check=check)


@probe("auth")
def _auth(stack: ExitStack, fx: Any) -> Probe:
    headers, body = _json(
        {"email": f"b-{uuid.uuid4().hex[:8]}@example.com", "password": "bundle-probe-passphrase-1"}
    )
    return Probe("POST", "/register", headers=headers, body=body)


@probe("agents")
def _agents(stack: ExitStack, fx: Any) -> Probe:
    from tests.support.fake_pubsub import FakePubSub

    pubsub = stack.enter_context(FakePubSub())
    task = fx.queued_task()
    _, token = fx.token_for(task.owner_id)
    headers, body = _json({"input": "Say hello"})

    def check(response: requests.Response) -> None:
        published = [json.loads(m.data)["task_id"] for m in pubsub.messages]
        assert published == [response.json()["id"]]

    return Probe(
        "POST",
        f"/agents/{task.agent_id}/tasks",
        env={
            "PUBSUB_MODE": "gcp",
            "PUBSUB_EMULATOR_HOST": pubsub.host,
            "GOOGLE_CLOUD_PROJECT": "stratus-bundles",
        },
        headers={**headers, "Authorization": token},
        body=body,
        check=check,
    )


@probe("task_runner")
def _task_runner(stack: ExitStack, fx: Any) -> Probe:
    from shared_layer.eventarc import binary_cloudevent, task_message
    from tests.support.fake_openai import FakeOpenAIServer

    llm = stack.enter_context(FakeOpenAIServer())
    task = fx.queued_task()
    data, attributes = task_message(task.task_id)
    headers, body = binary_cloudevent(
        data=data,
        attributes=attributes,
        message_id=uuid.uuid4().hex,
        project="stratus-bundles",
        topic="stratus-tasks",
        subscription="stratus-tasks-task-runner",
    )

    def check(response: requests.Response) -> None:
        assert fx.task_status(task.task_id) == "succeeded"
        assert llm.chat_requests()

    env = {"LLM_PROVIDER": "openai", "OPENAI_BASE_URL": llm.base_url, "OPENAI_API_KEY": "k"}
    return Probe("POST", "/", env=env, headers=headers, body=body, check=check)


@probe("billing")
def _billing(stack: ExitStack, fx: Any) -> Probe:
    from tests.support.fake_stripe import FakeStripeServer

    stripe = stack.enter_context(FakeStripeServer(api_key="sk_test_bundles"))
    _, token = fx.user_token()
    headers, body = _json({"plan": "pro"})

    def check(response: requests.Response) -> None:
        assert stripe.calls("POST", "/v1/checkout/sessions")

    env = {
        "STRIPE_SECRET_KEY": stripe.api_key,
        "STRIPE_API_BASE": stripe.base_url,
        "STRIPE_PRICE_PRO": "price_pro",
        "STRIPE_MAX_NETWORK_RETRIES": "0",
    }
    return Probe("POST", "/checkout", env, {**headers, "Authorization": token}, body, check)


@probe("stripe_webhook")
def _stripe_webhook(stack: ExitStack, fx: Any) -> Probe:
    from tests.support.fake_stripe import event, stripe_signature

    secret = "whsec_bundles"
    body = json.dumps(event("customer.created", {"id": "cus_bundle", "object": "customer"}))
    headers = {
        "Content-Type": "application/json",
        "Stripe-Signature": stripe_signature(body, secret),
    }

    def check(response: requests.Response) -> None:
        assert response.json()["duplicate"] is False

    env = {"STRIPE_WEBHOOK_SECRET": secret}
    return Probe("POST", "/", env, headers, body.encode(), check)


@probe("sendgrid_webhook")
def _sendgrid_webhook(stack: ExitStack, fx: Any) -> Probe:
    from tests.support.fake_sendgrid import EventSigner, sendgrid_event

    signer = EventSigner()
    body = json.dumps([sendgrid_event("someone@example.com")]).encode()
    env = {"SENDGRID_WEBHOOK_PUBLIC_KEY": signer.public_key}
    return Probe("POST", "/", env, signer.headers(body), body)


@probe("metrics_cleanup")
def _metrics_cleanup(stack: ExitStack, fx: Any) -> Probe:
    from tests.support.fake_google_oidc import GoogleCerts

    google = stack.enter_context(GoogleCerts())
    token = google.mint(audience=SCHEDULER_AUDIENCE, email=SCHEDULER_EMAIL)
    env = {
        "GOOGLE_OIDC_CERTS_URL": google.certs_url,
        "SCHEDULER_SERVICE_ACCOUNT_EMAIL": SCHEDULER_EMAIL,
        "SCHEDULER_OIDC_AUDIENCE": SCHEDULER_AUDIENCE,
    }
    return Probe("POST", "/", env, {"Authorization": f"Bearer {token}"})


class Fixtures:
    """What probes set up in the shared database, through this process's settings."""

    def __init__(self, queued_task: Callable[..., Any], user_token: Callable[..., Any]) -> None:
        self.queued_task, self.user_token = queued_task, user_token

    @staticmethod
    def token_for(user_id: uuid.UUID) -> tuple[uuid.UUID, str]:
        from tests.conftest import bearer_for

        return user_id, bearer_for(user_id)

    @staticmethod
    def task_status(task_id: uuid.UUID) -> str:
        from shared_layer.database import session_scope
        from shared_layer.models import Task

        with session_scope() as session:
            task = session.get(Task, task_id)
            assert task is not None
            return str(task.status)


def test_every_function_has_a_bundle_and_a_probe(bundles: dict[str, Bundle]) -> None:
    assert sorted(bundles) == FUNCTIONS
    assert not set(FUNCTIONS) - set(PROBES), "add a probe for each new function to this file"


@pytest.mark.parametrize("name", FUNCTIONS)
def test_the_bundle_serves_a_2xx_from_its_own_virtualenv(
    name: str,
    bundles: dict[str, Bundle],
    venvs: dict[str, Path],
    shared_db: str,
    queued_task: Callable[..., Any],
    user_token: Callable[..., Any],
) -> None:
    with ExitStack() as stack:
        made = PROBES[name](stack, Fixtures(queued_task, user_token))
        env = child_env(DATABASE_URL=shared_db, **made.env)
        with serving(name, venvs[name], bundles[name], env) as url:
            response = requests.request(
                made.method, url + made.path, headers=made.headers, data=made.body, timeout=30
            )
            assert 200 <= response.status_code < 300, response.text[:2000]
            made.check(response)


TOKEN_URI = "http://127.0.0.1:9/token"  # nothing listens: where Google would be needed


def _reaches(module: str) -> list[str]:
    return [name for name in FUNCTIONS if module in reach(ROOT, name).modules]


# How a function's code can open a Cloud SQL connection (stratus/import_graph.py): through
# SQLAlchemy's engine (shared_layer/database.py), or through the plain-SQL pool of
# shared_layer/sql.py (dbapi.connect -> dbapi.cloud_sql_connection), which every function uses
# and auth, agents and billing use alone.
ENGINE_USERS = _reaches("shared_layer.database")
PLAIN_SQL_USERS = _reaches("shared_layer.sql")


@pytest.fixture
def cloud_sql_env(tmp_path: Path) -> Callable[[str], dict[str, str]]:
    """The settings of a deployed function: CLOUD_SQL_INSTANCE, and a service-account file
    (a real key, a token URI on which nothing listens) for the connector's credentials."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )

    def make(name: str) -> dict[str, str]:
        credentials = tmp_path / f"{name}-service-account.json"
        account = {
            "type": "service_account",
            "project_id": "stratus-bundles",
            "private_key_id": "k1",
            "private_key": key.decode(),
            "client_email": f"{name.replace('_', '-')}@stratus-bundles.iam.gserviceaccount.com",
            "client_id": "1",
            "token_uri": TOKEN_URI,
        }
        credentials.write_text(json.dumps(account))
        return child_env(
            CLOUD_SQL_INSTANCE="stratus-bundles:europe-west1:stratus",
            DB_PASSWORD="bundle-db-password",
            GOOGLE_APPLICATION_CREDENTIALS=str(credentials),
        )

    return make


def _run_in_bundle(python: Path, bundle: Bundle, script: str, env: dict[str, str]) -> str:
    result = subprocess.run(
        [str(python), "-c", script],
        cwd=bundle.directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_every_function_opens_cloud_sql_some_way() -> None:
    assert set(ENGINE_USERS) | set(PLAIN_SQL_USERS) == set(FUNCTIONS)


@pytest.mark.parametrize("name", ENGINE_USERS)
def test_the_bundle_opens_a_cloud_sql_engine_through_the_connector(
    name: str,
    bundles: dict[str, Bundle],
    venvs: dict[str, Path],
    cloud_sql_env: Callable[[str], dict[str, str]],
) -> None:
    """What a function whose code reaches shared_layer/database.py does on its first ORM query
    (CLOUD_SQL_INSTANCE set): import the Cloud SQL connector and build the engine. Connecting
    needs Google; building does not."""
    script = (
        "import shared_layer, sys\n"
        "from shared_layer.database import build_engine\n"
        "engine = build_engine()\n"
        "print(engine.url.drivername, shared_layer.__file__)\n"
    )
    output = _run_in_bundle(venvs[name], bundles[name], script, cloud_sql_env(name))

    driver, module = output.split()
    assert driver == "postgresql+pg8000"
    assert Path(module).is_relative_to(bundles[name].directory)  # the vendored copy, not ours


_FIRST_CONNECTION = """
import json, sys, traceback
import shared_layer
from shared_layer import dbapi
from shared_layer.sql import transaction
try:
    with transaction() as db:
        db.scalar("SELECT 1")
except Exception as exc:
    error = exc
else:
    sys.exit("connected to Cloud SQL without Google")
import pg8000  # the driver the connector hands its socket to
connector = type(dbapi._connector)
dbapi.reset_cloud_sql_connector()
print(json.dumps({
    "error": f"{type(error).__module__}.{type(error).__qualname__}: {error}",
    "frames": [[f.filename, f.name] for f in traceback.extract_tb(error.__traceback__)],
    "connector": f"{connector.__module__}.{connector.__qualname__}",
    "sqlalchemy": sorted(m for m in sys.modules if m.split(".")[0] == "sqlalchemy"),
    "shared_layer": shared_layer.__file__,
}))
"""


@pytest.mark.parametrize("name", PLAIN_SQL_USERS)
def test_the_bundle_opens_its_first_plain_sql_connection_through_the_connector(
    name: str,
    bundles: dict[str, Bundle],
    venvs: dict[str, Path],
    cloud_sql_env: Callable[[str], dict[str, str]],
) -> None:
    """What shared_layer/sql.py does on a function's first query (CLOUD_SQL_INSTANCE set): its
    pool calls dbapi.connect, which hands the instance to a Cloud SQL connector; the connector,
    imported and built, signs a token request with the service account's key and sends it to
    the token URI, where Google would answer. That request failing is as far as a test gets,
    and no SQLAlchemy is imported on the way."""
    bundle = bundles[name]
    report = json.loads(_run_in_bundle(venvs[name], bundle, _FIRST_CONNECTION, cloud_sql_env(name)))

    frames = [(Path(file), function) for file, function in report["frames"]]
    ours = [
        (file.relative_to(bundle.directory).as_posix(), function, index)
        for index, (file, function) in enumerate(frames)
        if file.is_relative_to(bundle.directory)
    ]
    assert ours[0][:2] == ("shared_layer/sql.py", "transaction")
    assert ours[-1][:2] == ("shared_layer/dbapi.py", "cloud_sql_connection")
    connector_file, connector_call = frames[ours[-1][2] + 1]  # what the vendored code called
    assert connector_file.is_relative_to(venvs[name].parents[1])  # installed in the bundle's env
    assert connector_file.as_posix().endswith("google/cloud/sql/connector/connector.py")
    assert connector_call == "connect"
    assert report["connector"] == "google.cloud.sql.connector.connector.Connector"
    error = report["error"]  # the token request to the service account's token URI
    assert error.startswith("google.auth.exceptions."), error
    assert "127.0.0.1" in error, error
    assert "/token" in error, error
    assert report["sqlalchemy"] == []
    assert Path(report["shared_layer"]).is_relative_to(bundle.directory)


# Imported by a library rather than by our code, so the import graph does not see it.
IMPORTED_BY_LIBRARIES = {
    "requests": "google.auth.transport.requests (metrics_cleanup's OIDC check)"
}


@pytest.mark.parametrize("name", FUNCTIONS)
def test_requirements_in_names_only_what_the_function_can_import(
    name: str, bundles: dict[str, Bundle]
) -> None:
    """Issue 2: each function declares the libraries it imports (lazily included), and no
    others, so its bundle ships only those (SQLAlchemy left auth, agents and billing with
    shared_layer/sql.py)."""
    imported = {distribution_of(i.module) for i in reach(ROOT, name).third_party}

    assert set(bundles[name].direct) - imported - set(IMPORTED_BY_LIBRARIES) == set()


def test_health_carries_no_openai_stripe_or_storage_client(bundles: dict[str, Bundle]) -> None:
    carried = {pin.key for pin in bundles["health"].pins}

    assert not carried & {"openai", "stripe", "google-cloud-storage"}


def test_no_bundle_carries_openai_and_only_stripe_users_carry_stripe(
    bundles: dict[str, Bundle],
) -> None:
    def carrying(package: str) -> set[str]:
        return {name for name, b in bundles.items() if package in {p.key for p in b.pins}}

    assert carrying("openai") == set()  # the model is called through shared_layer/llm_http.py
    assert carrying("stripe") <= {"billing"}  # stripe_webhook checks signatures by hand
