"""What monitoring costs: requests per second of an authenticated `GET /agents`, monitoring on
against monitoring off (`MONITORING_ENABLED=false`), measured in the same run.

Two agents functions are started exactly as Cloud Functions' runtime starts them
(`functions-framework --target agents --source functions/agents/main.py`, gunicorn, one worker)
on the same database — a throwaway PostgreSQL database by default, or a SQLite file — with a
user owning five agents. Client threads on keep-alive connections send `GET /agents` with the
user's bearer token for a fixed time; rounds alternate on / off so both see the same machine,
and the medians and their ratio are printed (target >= 0.9). With monitoring on, each request
is recorded (route template, status, duration, user, execution id) through the batched writer
in shared_layer/metrics_buffer.py, with the default batch settings. A measurement: it never
fails on a missed target.

    .venv/bin/python bench/overhead.py [--database postgresql|sqlite] [--seconds 5]
        [--rounds 3] [--clients 8]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from http.client import HTTPConnection
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.processes import free_port, throwaway_database  # noqa: E402

TARGET_RATIO = 0.9
START_TIMEOUT = 60.0


def prepare(url: str) -> str:
    """Migrate, create a user with five agents; the user's bearer token."""
    os.environ["DATABASE_URL"] = url
    from shared_layer.config import reset_settings
    from shared_layer.database import get_engine, reset_engine, session_scope
    from shared_layer.migrate import upgrade
    from shared_layer.models import Agent, User
    from shared_layer.services.accounts import get_active_user, start_session
    from shared_layer.sql import transaction

    reset_settings()
    reset_engine()
    upgrade(get_engine())
    with session_scope() as session:
        email = f"bench-{uuid.uuid4().hex[:8]}@example.com"
        user = User(email=email, password_hash="!")  # noqa: S106 - no password: tokens only
        session.add(user)
        session.flush()
        for i in range(5):
            session.add(Agent(owner_id=user.id, name=f"agent-{i}"))
        user_id = user.id
    with transaction() as db:
        user_record = get_active_user(db, user_id=user_id)
        pair = start_session(db, user=user_record, user_agent="bench", ip_address=None)
    reset_engine()
    return f"Bearer {pair.access_token}"


def start(port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    source = ROOT / "functions" / "agents" / "main.py"
    command = [
        str(Path(sys.executable).parent / "functions-framework"),
        "--target",
        "agents",
        "--source",
        str(source),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    return subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT
    )


def wait_ready(port: int, bearer: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        try:
            conn = HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/agents", headers={"Authorization": bearer})
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"the function on port {port} did not answer 200 in {START_TIMEOUT} s")


def load(port: int, bearer: str, *, seconds: float, clients: int) -> float:
    """Requests per second answered 200 by `clients` keep-alive clients in `seconds`."""
    counts = [0] * clients
    failures = [0] * clients
    stop = time.monotonic() + seconds

    def client(index: int) -> None:
        conn = HTTPConnection("127.0.0.1", port, timeout=10)
        while time.monotonic() < stop:
            conn.request("GET", "/agents", headers={"Authorization": bearer})
            response = conn.getresponse()
            response.read()
            if response.status == 200:
                counts[index] += 1
            else:
                failures[index] += 1
        conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if sum(failures):
        raise RuntimeError(f"{sum(failures)} requests did not answer 200")
    return sum(counts) / (time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", choices=["postgresql", "sqlite"], default="postgresql")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=8)
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
    }
    os.environ.update(base)
    with tempfile.TemporaryDirectory() as tmp:
        url, drop = throwaway_database(args.database, args.admin_url, Path(tmp), "overhead")
        servers: list[subprocess.Popen[bytes]] = []
        try:
            bearer = prepare(url)
            ports = {"on": free_port(), "off": free_port()}
            for mode, port in ports.items():
                env = {**base, "DATABASE_URL": url, "MONITORING_ENABLED": str(mode == "on")}
                servers.append(start(port, env))
            for port in ports.values():
                wait_ready(port, bearer)
                load(port, bearer, seconds=1.0, clients=args.clients)  # warm up
            results: dict[str, list[float]] = {"on": [], "off": []}
            print(
                f"GET /agents (5 agents), {args.clients} clients, {args.seconds:g} s per round, "
                f"{args.database}; functions-framework (gunicorn, 1 worker)\n"
            )
            print(f"{'round':>5} {'monitoring':>10} {'requests/s':>11}")
            for round_ in range(1, args.rounds + 1):
                for mode in ("off", "on") if round_ % 2 else ("on", "off"):
                    rate = load(ports[mode], bearer, seconds=args.seconds, clients=args.clients)
                    results[mode].append(rate)
                    print(f"{round_:>5} {mode:>10} {rate:>11.0f}")
            on, off = statistics.median(results["on"]), statistics.median(results["off"])
            ratio = on / off
            verdict = "met" if ratio >= TARGET_RATIO else "MISSED"
            print(f"\nmedian requests/s: monitoring off {off:.0f}, on {on:.0f}")
            print(f"ratio on/off {ratio:.3f} (target >= {TARGET_RATIO}): {verdict}")
            stop(servers)  # on exit, the monitored server writes its last batch
            recorded = count_metrics(url)
            print(f"api_call_metrics rows recorded by the monitored server: {recorded:,}")
        finally:
            stop(servers)
            from shared_layer.database import reset_engine

            reset_engine()
            drop()


def stop(servers: list[subprocess.Popen[bytes]]) -> None:
    for server in servers:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
    for server in servers:
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


def count_metrics(url: str) -> int:
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    engine = create_engine(url, poolclass=NullPool)
    with engine.connect() as conn:
        count = int(conn.execute(text("SELECT count(*) FROM api_call_metrics")).scalar_one())
    engine.dispose()
    return count


if __name__ == "__main__":
    main()
