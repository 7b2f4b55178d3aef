"""Requests per second of Stratus's request paths beside a bare functions-framework hello world,
and beside the same paths at another git revision, measured in the same run.

Scenarios (each through functions-framework exactly as Cloud Functions starts it: gunicorn, one
worker, on a throwaway PostgreSQL database, or SQLite):

- `read`: an authenticated `GET /agents/agents` (a user with `--agents` agents), the path every
  signed-in page load takes. Measured twice for this tree: with the session check trusted for
  `AUTH_SESSION_CHECK_SECONDS` (the default, 5 s) and checked on every request (0).
- `login`: `POST /auth/login` with the right password (`--bcrypt-rounds`, 12 by default as in
  production; bcrypt is most of the time, so also try 4 to see everything else).

`--compare REV` checks REV out in a temporary git worktree and measures the same scenarios on
it, served from that tree's own code, on a database migrated by it. Rounds are paired: each round
runs every variant once, in an order that alternates, so all see the same machine; the medians
and the ratios of the medians are printed. A measurement: it never fails on a number.

    .venv/bin/python bench/requests.py [--scenario read,login] [--compare REV]
        [--database postgresql|sqlite] [--seconds 5] [--rounds 3] [--clients 8]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.client import HTTPConnection
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.processes import free_port, stop_group, throwaway_database  # noqa: E402

START_TIMEOUT = 60.0
PASSWORD = "bench-correct-horse-42"  # noqa: S105 - a throwaway account's

# Run with the tree under test first on sys.path: migrate, create the user and its agents, and
# print a bearer token. Written for this tree and for older revisions alike (no sessions then).
SEED = """
import json, sys, uuid
from shared_layer.config import reset_settings
from shared_layer.auth import hash_password
from shared_layer.database import get_engine, reset_engine, session_scope
from shared_layer.migrate import upgrade
from shared_layer.models import Agent, User
reset_settings(); reset_engine(); upgrade(get_engine())
email = f"bench-{uuid.uuid4().hex[:8]}@example.com"
with session_scope() as session:
    user = User(email=email, password_hash=hash_password(sys.argv[1]))
    session.add(user); session.flush()
    for i in range(int(sys.argv[2])):
        session.add(Agent(owner_id=user.id, name=f"agent-{i}"))
    user_id = user.id
try:
    from shared_layer.services.accounts import get_active_user, start_session
except ImportError:
    from shared_layer.auth import create_access_token
    token = create_access_token(user_id=user_id, email=email)
else:
    from shared_layer.sql import transaction
    with transaction() as db:
        pair = start_session(db, user=get_active_user(db, user_id=user_id), user_agent="bench",
                             ip_address=None)
    token = pair.access_token
print(json.dumps({"email": email, "token": token}))
"""


@dataclass
class Variant:
    """One server to load: a function of a tree, with some settings."""

    label: str
    tree: Path
    function: str
    env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    rates: list[float] = field(default_factory=list)


def python_env(tree: Path, base: dict[str, str], extra: dict[str, str]) -> dict[str, str]:
    """An environment in which `shared_layer` is imported from `tree` (its folder first on the
    path, ahead of the editable install)."""
    return {**base, **extra, "PYTHONPATH": str(tree)}


def seed(tree: Path, env: dict[str, str], agents: int) -> dict[str, str]:
    done = subprocess.run(
        [sys.executable, "-c", SEED, PASSWORD, str(agents)],
        env=env,
        cwd=tree,
        capture_output=True,
        text=True,
        check=True,
    )
    seeded: dict[str, str] = json.loads(done.stdout.strip().splitlines()[-1])
    return seeded


def start(variant: Variant, env: dict[str, str], logs: Path | None) -> None:
    variant.port = free_port()
    if variant.function == "hello":
        source = ROOT / "bench" / "hello" / "main.py"
    else:
        source = variant.tree / "functions" / variant.function / "main.py"
    executable = Path(sys.executable).parent / "functions-framework"
    command = [str(executable), "--target", variant.function, "--source", str(source)]
    command += ["--host", "127.0.0.1", "--port", str(variant.port)]
    variant.process = subprocess.Popen(
        command,
        env={**env, **variant.env},
        cwd=variant.tree,
        stdout=subprocess.DEVNULL if logs is None else open_log(logs, variant),
        stderr=subprocess.STDOUT if logs else subprocess.DEVNULL,
        start_new_session=True,
    )


def open_log(logs: Path, variant: Variant) -> IO[bytes]:
    logs.mkdir(parents=True, exist_ok=True)
    name = "".join(ch if ch.isalnum() else "-" for ch in variant.label)
    return (logs / f"{name}.log").open("wb")


Request = tuple[str, str, bytes | None, dict[str, str]]


def send(conn: HTTPConnection, request: Request) -> int:
    method, path, body, headers = request
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    response.read()
    return response.status


def wait_ready(port: int, request: Request) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        try:
            if send(HTTPConnection("127.0.0.1", port, timeout=5), request) == 200:
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"the server on port {port} did not answer 200 in {START_TIMEOUT} s")


def load(port: int, request: Request, *, seconds: float, clients: int) -> float:
    """Requests per second answered 200 by `clients` keep-alive clients in `seconds`."""
    counts, failures = [0] * clients, [0] * clients
    statuses: set[int] = set()
    stop = time.monotonic() + seconds

    def client(index: int) -> None:
        conn = HTTPConnection("127.0.0.1", port, timeout=30)
        while time.monotonic() < stop:
            status = send(conn, request)
            if status == 200:
                counts[index] += 1
            else:
                failures[index] += 1
                statuses.add(status)
        conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if sum(failures):
        raise RuntimeError(
            f"{sum(failures)} requests on port {port} answered {sorted(statuses)}, not 200"
        )
    return sum(counts) / (time.monotonic() - started)


def checkout(revision: str, workdir: Path) -> Path:
    tree = workdir / "compare"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), revision],
        check=True,
        capture_output=True,
    )
    return tree


def remove_checkout(tree: Path) -> None:
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
        check=False,
        capture_output=True,
    )


def requests_for(scenario: str, seeded: dict[str, str]) -> Request:
    if scenario == "read":
        return ("GET", "/agents", None, {"Authorization": f"Bearer {seeded['token']}"})
    body = json.dumps({"email": seeded["email"], "password": PASSWORD}).encode()
    return ("POST", "/login", body, {"Content-Type": "application/json"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="read,login")
    parser.add_argument("--compare", metavar="REV", help="a git revision to measure beside")
    parser.add_argument("--database", choices=["postgresql", "sqlite"], default="postgresql")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--agents", type=int, default=20)
    parser.add_argument("--bcrypt-rounds", type=int, default=12)
    parser.add_argument("--logs", type=Path, help="write each server's output to a file here")
    parser.add_argument(
        "--admin-url",
        default=os.environ.get(
            "STRATUS_TEST_POSTGRES_URL", "postgresql+pg8000://postgres@127.0.0.1:5432/test"
        ),
    )
    args = parser.parse_args()
    base = {
        **os.environ,
        "STRATUS_ENV": "local",
        "JWT_SECRET": "bench-" + uuid.uuid4().hex * 2,
        "LLM_PROVIDER": "offline",
        "LOG_LEVEL": "WARNING",
        "PUBSUB_MODE": "local",
        "BCRYPT_ROUNDS": str(args.bcrypt_rounds),
        # Eight clients signing in to one account at once: each attempt is counted until it
        # succeeds, so the default limits (5 at once) would refuse some.
        "LOGIN_THROTTLE_ACCOUNT_IP_FAILURES": "1000",
        "LOGIN_THROTTLE_IP_FAILURES": "1000",
        "LOGIN_THROTTLE_ACCOUNT_FAILURES": "1000",
    }
    scenarios = [s.strip() for s in args.scenario.split(",") if s.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        trees = {"this tree": ROOT}
        if args.compare:
            trees[args.compare] = checkout(args.compare, workdir)
        cleanups: list[Callable[[], None]] = []
        variants: list[tuple[Variant, Request]] = []
        try:
            hello = Variant("hello", ROOT, "hello")
            variants.append((hello, ("GET", "/", None, {})))
            for name, tree in trees.items():
                url, drop = throwaway_database(
                    args.database, args.admin_url, workdir, f"t{len(cleanups)}"
                )
                cleanups.append(drop)
                env = python_env(tree, base, {"DATABASE_URL": url})
                seeded = seed(tree, env, args.agents)
                for scenario in scenarios:
                    function = "agents" if scenario == "read" else "auth"
                    request = requests_for(scenario, seeded)
                    variants.append((Variant(f"{scenario}: {name}", tree, function, env), request))
                    if scenario == "read" and tree == ROOT:
                        every = Variant(
                            f"{scenario}: {name}, session checked every request",
                            tree,
                            function,
                            {**env, "AUTH_SESSION_CHECK_SECONDS": "0"},
                        )
                        variants.append((every, request))
            for variant, _ in variants:
                start(variant, variant.env or base, args.logs)
            for variant, request in variants:
                wait_ready(variant.port, request)
                load(variant.port, request, seconds=1.0, clients=args.clients)  # warm up
            print(
                f"{', '.join(scenarios)}; {args.clients} clients, {args.seconds:g} s per round, "
                f"{args.rounds} rounds, {args.database}, bcrypt rounds {args.bcrypt_rounds}; "
                "functions-framework (gunicorn, 1 worker)\n"
            )
            for round_ in range(args.rounds):
                order = variants if round_ % 2 == 0 else list(reversed(variants))
                for variant, request in order:
                    try:
                        rate = load(
                            variant.port, request, seconds=args.seconds, clients=args.clients
                        )
                    except RuntimeError as exc:
                        raise RuntimeError(f"{variant.label}: {exc}") from None
                    variant.rates.append(rate)
                    print(f"round {round_ + 1}  {variant.label:<55} {rate:8.1f}/s")
            report(variants)
        finally:
            for variant, _ in variants:
                if variant.process is not None:
                    stop_group(variant.process)
            for drop in cleanups:
                drop()
            if args.compare:
                remove_checkout(trees[args.compare])


def report(variants: list[tuple[Variant, Request]]) -> None:
    medians = {v.label: statistics.median(v.rates) for v, _ in variants}
    hello = medians["hello"]
    print(f"\n{'variant':<55} {'median/s':>9} {'x hello':>8}")
    for label, rate in medians.items():
        print(f"{label:<55} {rate:9.1f} {rate / hello:8.3f}")
    by_scenario: dict[str, list[tuple[str, float]]] = {}
    for label, rate in medians.items():
        if ": " in label:
            scenario, name = label.split(": ", 1)
            by_scenario.setdefault(scenario, []).append((name, rate))
    for scenario, rows in by_scenario.items():
        first_name, first = rows[0]
        for name, rate in rows[1:]:
            print(f"{scenario}: {name} / {first_name} = {rate / first:.3f}")


if __name__ == "__main__":
    main()
