"""The local stack: every function on one port, the task queue in process.

Each function is the app functions-framework builds for it (`create_app`), mounted under
`/<function>` with werkzeug's `DispatcherMiddleware`, so inside a function `request.path` is the
sub-path it would see on Cloud Functions (`/auth/login` reaches the auth function as `/login`).
Pub/Sub and Eventarc are replaced by the local publisher (shared_layer/pubsub.py) handing the
same binary-mode CloudEvent to the task_runner app in process — no network, no emulator.

This is a development server (werkzeug's `run_simple`, one thread per request): it is for a
laptop and for tests, never for production traffic.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from collections.abc import Callable, Iterable, MutableMapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.wrappers import Request, Response

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
TASK_RUNNER = "task_runner"


def functions_dir(root: Path = ROOT) -> Path:
    path = root / "functions"
    if not path.is_dir():
        raise FileNotFoundError(
            f"no functions/ directory under {root}: run the local stack from a Stratus checkout "
            "installed with `pip install -e .`"
        )
    return path


def discover_functions(root: Path = ROOT) -> list[str]:
    """The functions that exist: every `functions/<name>/main.py`, by name."""
    return sorted(p.parent.name for p in functions_dir(root).glob("*/main.py"))


def local_jwt_secret(state_dir: Path) -> str:
    """A random signing key kept in the state directory: tokens outlive a restart of the stack,
    and no two checkouts share a key (the settings' built-in one is refused in production)."""
    path = state_dir / "jwt-secret"
    if not path.exists():
        state_dir.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(48))
    return path.read_text().strip()


# Settings that make a laptop a whole Stratus: SQLite, the in-process queue, a local key. The
# LLM stays `auto` (the settings' default): offline unless OPENAI_API_KEY or OPENAI_BASE_URL is
# set, so a developer's key or local model server is used when present.
LOCAL_DEFAULTS: dict[str, Callable[[Path], str]] = {
    "STRATUS_ENV": lambda _: "local",
    "DATABASE_URL": lambda state_dir: f"sqlite:///{state_dir / 'stratus.db'}",
    "PUBSUB_MODE": lambda _: "local",
    "LOCAL_PUSH_MODE": lambda _: "thread",
    "JWT_SECRET": local_jwt_secret,
}


def apply_local_defaults(
    env: MutableMapping[str, str] | None = None,
    *,
    state_dir: Path | None = None,
    dotenv: Path | None = None,
) -> dict[str, str]:
    """Set each local default that neither the environment nor `.env` sets; return those set."""
    from dotenv import dotenv_values

    env = os.environ if env is None else env
    state_dir = state_dir or Path.cwd() / ".stratus"
    dotenv = dotenv or Path.cwd() / ".env"
    from_file = {k.upper() for k in dotenv_values(dotenv)} if dotenv.is_file() else set()
    applied: dict[str, str] = {}
    for key, default in LOCAL_DEFAULTS.items():
        if key not in env and key not in from_file:
            env[key] = applied[key] = default(state_dir)
    from shared_layer.config import reset_settings
    from shared_layer.database import reset_engine

    reset_settings()
    reset_engine()
    return applied


def migrate() -> str | None:
    """Bring the configured database to the newest schema; the revision it is at."""
    from shared_layer.database import get_engine
    from shared_layer.migrate import current_revision, upgrade

    engine = get_engine()
    upgrade(engine)
    return current_revision(engine)


def load_function(name: str, root: Path = ROOT) -> Any:
    """The function's app exactly as functions-framework builds it for `--target name`."""
    import functions_framework

    source = functions_dir(root) / name / "main.py"
    create_app: Any = functions_framework.create_app  # untyped upstream
    return create_app(target=name, source=str(source))


def deliver_in_process(task_runner_app: Any) -> Callable[[dict[str, str], bytes], int]:
    """A push target that POSTs each CloudEvent to the task_runner app and returns its status."""

    def push(headers: dict[str, str], body: bytes) -> int:
        client = task_runner_app.test_client()
        try:
            response = client.post("/", headers=headers, data=body)
        except Exception:  # the runner crashed: what Eventarc would see as a 500
            logger.exception("task_runner raised while handling a pushed event")
            return 500
        return int(response.status_code)

    return push


def connect_task_runner(task_runner_app: Any) -> None:
    from shared_layer.pubsub import set_local_push_target

    set_local_push_target(deliver_in_process(task_runner_app))


def _json(body: Any, status: int, mimetype: str = "application/json") -> Response:
    return Response(json.dumps(body), status=status, mimetype=mimetype)


def index_app(functions: Sequence[str], base_url: str = "") -> WSGIApplication:
    """`/` lists the functions; any other top-level path is a problem+json 404 naming them."""
    from shared_layer.errors import PROBLEM_CONTENT_TYPE, NotFound, problem_for

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        request = Request(environ)
        if request.path in ("", "/"):
            body = {
                "service": "stratus local stack (development server)",
                "functions": {name: f"{base_url}/{name}/" for name in functions},
            }
            response = _json(body, 200)
        else:
            first = request.path.strip("/").split("/")[0]
            error = NotFound(
                f"no function named {first!r} in the local stack; the functions are: "
                + ", ".join(f"/{name}" for name in functions),
                extra={"functions": list(functions)},
            )
            response = _json(problem_for(error, instance=request.path), 404, PROBLEM_CONTENT_TYPE)
        return response(environ, start_response)

    return app


def build_app(
    functions: Sequence[str] | None = None, *, root: Path = ROOT, base_url: str = ""
) -> WSGIApplication:
    """One WSGI app serving each function under `/<name>`; connects the task queue if it can."""
    names = list(functions) if functions is not None else discover_functions(root)
    apps: dict[str, Any] = {name: load_function(name, root) for name in names}
    if TASK_RUNNER in apps:
        connect_task_runner(apps[TASK_RUNNER])
    else:
        logger.warning("no task_runner function: submitted tasks will stay queued")
    mounts: dict[str, WSGIApplication] = {f"/{name}": app for name, app in apps.items()}
    return DispatcherMiddleware(index_app(names, base_url), mounts)


def quickstart(base_url: str, functions: Sequence[str]) -> str:
    """Commands to paste into another terminal, in the order a new user would run them."""
    b = base_url.rstrip("/")
    email, password = "you@example.com", "correct-horse-42"
    lines = [
        f"Stratus local stack (development server) on {b}",
        "functions: " + ", ".join(f"{b}/{name}/" for name in functions),
        "",
        "Try it (in another terminal):",
        f"  curl -s -X POST {b}/auth/register -H 'Content-Type: application/json' \\",
        f'       -d \'{{"email": "{email}", "password": "{password}"}}\'',
        f"  TOKEN=$(curl -s -X POST {b}/auth/login -H 'Content-Type: application/json' \\",
        f'       -d \'{{"email": "{email}", "password": "{password}"}}\' \\',
        "       | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"access_token\"])')",
        f'  AGENT=$(curl -s -X POST {b}/agents/agents -H "Authorization: Bearer $TOKEN" \\',
        "       -H 'Content-Type: application/json' -d '{\"name\": \"helper\"}' \\",
        "       | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"id\"])')",
        f"  TASK=$(curl -s -X POST {b}/agents/agents/$AGENT/tasks \\",
        "       -H \"Authorization: Bearer $TOKEN\" -H 'Content-Type: application/json' \\",
        '       -d \'{"input": "Say hello"}\' \\',
        "       | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"id\"])')",
        f'  curl -s {b}/agents/tasks/$TASK -H "Authorization: Bearer $TOKEN"',
        "",
        f"Or all of it at once:  stratus demo --url {b}",
    ]
    return "\n".join(lines)


def describe_settings() -> str:
    from sqlalchemy.engine import make_url

    from shared_layer.config import get_settings

    s = get_settings()
    database = make_url(s.database_url).render_as_string(hide_password=True)
    if s.cloud_sql_instance:
        database = f"Cloud SQL {s.cloud_sql_instance}"
    llm = s.llm_mode + (" (deterministic, labelled offline)" if s.llm_mode == "offline" else "")
    if s.llm_mode == "openai" and s.openai_base_url:
        llm += f" at {s.openai_base_url}"
    return f"database: {database}\nLLM: {llm}\ntask queue: {s.pubsub_mode} ({s.local_push_mode})"


def _start_scheduler() -> None:
    """Cloud Scheduler's stand-in: the metrics cleanup and lease reaper on a timer
    (`LOCAL_CLEANUP_INTERVAL_SECONDS`, 0 turns it off)."""
    from shared_layer.config import get_settings
    from stratus.ops import start_cleanup_timer

    interval = get_settings().local_cleanup_interval_seconds
    if interval > 0:
        start_cleanup_timer(interval)
        print(f"metrics cleanup and lease reaping every {interval} s", flush=True)


def serve(host: str = "127.0.0.1", port: int = 8080) -> None:
    """Apply local defaults, migrate, mount every function and serve until interrupted."""
    from werkzeug.serving import run_simple

    from shared_layer.logging_config import configure_logging

    apply_local_defaults()
    configure_logging()
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)  # start-up noise
    revision = migrate()
    base_url = f"http://{host}:{port}"
    names = discover_functions()
    app = build_app(names, base_url=base_url)
    banner = f"{describe_settings()}\nschema: {revision}\n\n{quickstart(base_url, names)}\n"
    print(banner, flush=True)
    _start_scheduler()
    run_simple(host, port, app, threaded=True, use_reloader=False, use_debugger=False)
