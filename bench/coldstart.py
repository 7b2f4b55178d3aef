"""Cold start and peak memory of each function, beside a bare functions-framework hello world.

Every function is started the same way Cloud Functions' Python runtime starts it —
`functions-framework --target NAME --source functions/NAME/main.py --port P` — and timed from
process start to its first 2xx answer on a real route; then the peak RSS (VmHWM) of its process
tree is read. The median of several runs is compared with `bench/hello/main.py` measured in the
same run, against the targets below. It is a measurement: it never fails on a missed target.

    .venv/bin/python bench/coldstart.py [--runs 5] [--only auth,health] [--bundles] [--floors]

`--bundles` starts each function as deployed instead: from the bundle `stratus bundle` builds,
in its own virtualenv installed from the bundle's requirements.txt alone, its working
directory the bundle; hello then runs in a virtualenv holding functions-framework and its
dependencies only (stratus/bundle_env.py; the first run fills the wheel cache).

`--floors` adds what bounds the functions from below, each a function of its own under
bench/floors/: `floor_settings` (the settings only), `floor_orm` (the settings, SQLAlchemy's ORM
with the models, one query) and `floor_openai` (one chat completion through `openai`, nothing of
Stratus). No function that uses one of these can start faster than it.

Routes: hello, the floors and health `GET /`, auth `POST /register` (a new email each run), agents
`GET /agents` (a token made for the bench), task_runner the binary-mode CloudEvent Eventarc
sends for a freshly queued task, run by the agent against a loopback OpenAI-compatible server
(tests/support/fake_openai.py). The database is a SQLite file, migrated beforehand.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.client import HTTPConnection
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.support.fake_openai, when run as a script

from bench.processes import free_port, stop_group  # noqa: E402

BASELINE = "hello"
FUNCTIONS = ("health", "auth", "agents", "task_runner")
FLOORS = ("floor_settings", "floor_orm", "floor_openai")  # bench/floors/<name>/main.py
# name: (max cold start ratio, max peak RSS ratio) to hello
TARGETS = {
    "health": (2.0, 2.0),
    "auth": (2.5, 2.0),
    "agents": (2.5, 2.0),
    "task_runner": (4.0, 3.0),
}
START_TIMEOUT = 60.0
PASSWORD = "bench-pw-42"  # noqa: S105 - a throwaway account in a temporary database


@dataclass(frozen=True)
class Probe:
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None


@dataclass
class Sample:
    ready_ms: float  # the port accepted a connection: imports done, server listening
    ms: float  # the first 2xx: ready + the first request's own work (lazy imports, connecting)
    rss_kb: int


def source_of(name: str) -> Path:
    if name in FLOORS:
        return ROOT / "bench/floors" / name / "main.py"
    return ROOT / ("bench/hello" if name == BASELINE else f"functions/{name}") / "main.py"


@dataclass(frozen=True)
class Launch:
    """How a function starts: which functions-framework (so which interpreter and packages),
    which source file, from which working directory."""

    executable: Path
    source: Path
    cwd: Path


def dev_launch(name: str) -> Launch:
    return Launch(Path(sys.executable).with_name("functions-framework"), source_of(name), ROOT)


def bundle_launches(names: list[str], workdir: Path) -> dict[str, Launch]:
    """Each function from its bundle, in a virtualenv of its own requirements.txt; hello in one
    holding functions-framework and what it needs, nothing else."""
    from packaging.requirements import Requirement

    from stratus.bundle import build_bundles
    from stratus.bundle_env import default_wheelhouse, ensure_wheels, pinned, venv_for
    from stratus.pins import read_constraints, requirements_txt, resolve

    out = workdir / "build"
    directories = {b.name: b.directory for b in build_bundles(names, out=out)}
    hello = directories[BASELINE] = out / BASELINE
    hello.mkdir()
    shutil.copy(source_of(BASELINE), hello / "main.py")
    pins = resolve([Requirement("functions-framework")], read_constraints(ROOT / "constraints.txt"))
    (hello / "requirements.txt").write_text(requirements_txt(BASELINE, pins))
    wheelhouse = default_wheelhouse()
    wanted = {line for d in directories.values() for line in pinned(d / "requirements.txt")}
    ensure_wheels(wanted, wheelhouse)
    launches = {}
    for name, directory in directories.items():
        python = venv_for(directory / "requirements.txt", wheelhouse)
        executable = python.with_name("functions-framework")
        launches[name] = Launch(executable, directory / "main.py", directory)
    return launches


class Fixtures:
    """A migrated SQLite database with a user, a token and an agent; a queued task per run."""

    def __init__(self, env: dict[str, str]) -> None:
        os.environ.update(env)
        from shared_layer.auth import hash_password
        from shared_layer.config import reset_settings
        from shared_layer.database import get_engine, reset_engine, session_scope
        from shared_layer.migrate import upgrade
        from shared_layer.models import Agent
        from shared_layer.services.accounts import register_user, start_session
        from shared_layer.sql import transaction

        reset_settings()
        reset_engine()
        upgrade(get_engine())
        with transaction() as db:
            user = register_user(
                db,
                email=f"bench-{uuid.uuid4().hex[:8]}@example.com",
                password_hash=hash_password(PASSWORD),
            )
        with session_scope() as session:
            agent = Agent(owner_id=user.id, name="bench agent")
            session.add(agent)
            session.flush()
            self.user_id, self.agent_id = user.id, agent.id
        with transaction() as db:
            pair = start_session(db, user=user, user_agent="bench", ip_address=None)
        self.token = pair.access_token

    def queued_task_event(self) -> Probe:
        from shared_layer.config import get_settings
        from shared_layer.database import session_scope
        from shared_layer.eventarc import binary_cloudevent, task_message
        from shared_layer.models import Task

        with session_scope() as session:
            task = Task(agent_id=self.agent_id, owner_id=self.user_id, input="Say hello.")
            session.add(task)
            session.flush()
            task_id = task.id
        data, attributes = task_message(task_id)
        settings = get_settings()
        headers, body = binary_cloudevent(
            data=data,
            attributes=attributes,
            message_id=uuid.uuid4().hex,
            project="stratus-bench",
            topic=settings.tasks_topic,
            subscription=settings.pubsub_subscription,
        )
        return Probe("POST", "/", headers, body)


def probe_for(name: str, fixtures: Fixtures) -> Callable[[], Probe]:
    json_type = {"Content-Type": "application/json"}
    if name in (BASELINE, "health", *FLOORS):
        return lambda: Probe("GET", "/")
    if name == "auth":
        return lambda: Probe(
            "POST",
            "/register",
            json_type,
            json.dumps(
                {"email": f"cold-{uuid.uuid4().hex[:10]}@example.com", "password": PASSWORD}
            ).encode(),
        )
    if name == "agents":
        return lambda: Probe("GET", "/agents", {"Authorization": f"Bearer {fixtures.token}"})
    if name == "task_runner":
        return fixtures.queued_task_event
    raise ValueError(name)


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants, from /proc (functions-framework runs gunicorn: a master and a
    worker forked from it after the app is loaded)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def peak_rss_kb(pid: int) -> int:
    """The largest VmHWM in the tree. The worker is forked from the loaded master and its RSS
    counts the pages it shares with it, so the largest is the process that serves, not a sum
    that would count shared pages twice."""
    peak = 0
    for member in process_tree(pid):
        try:
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]))
        except OSError:
            continue
    return peak


def first_2xx(
    port: int, probe: Probe, started: float, process: subprocess.Popen[bytes]
) -> tuple[float, float]:
    """Milliseconds from `started` to the first accepted connection and to the first 2xx; polls
    as fast as connections are refused."""
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"exited with {process.returncode} before answering")
        if time.perf_counter() - started > START_TIMEOUT:
            raise RuntimeError(f"no answer in {START_TIMEOUT:.0f} s")
        connection = HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            connection.connect()
            ready = (time.perf_counter() - started) * 1000
            connection.request(probe.method, probe.path, body=probe.body, headers=probe.headers)
            response = connection.getresponse()
            body = response.read()
        except (ConnectionRefusedError, ConnectionResetError):
            time.sleep(0.002)
            continue
        finally:
            connection.close()
        elapsed = (time.perf_counter() - started) * 1000
        if not 200 <= response.status < 300:
            answer = f"{response.status}: {body[:300]!r}"
            raise RuntimeError(f"{probe.method} {probe.path} answered {answer}")
        return ready, elapsed


def measure(name: str, probe: Probe, env: dict[str, str], log: Path, launch: Launch) -> Sample:
    port = free_port()
    command = [
        str(launch.executable),
        "--target", name,
        "--source", str(launch.source),
        "--host", "127.0.0.1",
        "--port", str(port),
    ]  # fmt: skip
    with log.open("ab") as out:
        started = time.perf_counter()
        process = subprocess.Popen(
            command, env=env, cwd=launch.cwd, stdout=out, stderr=out, start_new_session=True
        )
    try:
        ready_ms, ms = first_2xx(port, probe, started, process)
        return Sample(ready_ms, ms, peak_rss_kb(process.pid))
    finally:
        stop_group(process)


def child_env(workdir: Path, openai_url: str) -> dict[str, str]:
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env.update(
        STRATUS_ENV="local",
        DATABASE_URL=f"sqlite:///{workdir / 'bench.db'}",
        JWT_SECRET="bench-" + "z" * 40,
        # Request work is not start-up work: cheap hashing keeps auth's number about starting.
        BCRYPT_ROUNDS="4",
        LLM_PROVIDER="openai",
        OPENAI_BASE_URL=openai_url,
        OPENAI_API_KEY="bench-key",
        PUBSUB_MODE="local",
        LOCAL_PUSH_MODE="sync",
        LOG_LEVEL="WARNING",
    )
    return env


def mark(ratio: float, target: float) -> str:
    return f"{ratio:4.2f}x {'PASS' if ratio <= target else 'MISS'} (<= {target:.1f}x)"


def report(results: dict[str, list[Sample]], runs: int) -> str:
    base = results[BASELINE]
    base_ms = statistics.median(s.ms for s in base)
    base_mb = statistics.median(s.rss_kb for s in base) / 1024
    lines = [
        f"median of {runs} runs; ready: process start -> port accepts a connection; cold: "
        "process start -> first 2xx;\npeak RSS: largest VmHWM in the process tree",
        f"{'function':<14} {'ready ms':>8} {'cold ms':>8}  {'vs hello (target)':<24} "
        f"{'RSS MB':>7}  vs hello (target)",
    ]
    for name, samples in results.items():
        ms = statistics.median(s.ms for s in samples)
        ready = statistics.median(s.ready_ms for s in samples)
        mb = statistics.median(s.rss_kb for s in samples) / 1024
        if name == BASELINE:
            time_ratio = rss_ratio = "1.00x (baseline)"
        elif name in FLOORS:
            time_ratio, rss_ratio = f"{ms / base_ms:4.2f}x (floor)", f"{mb / base_mb:4.2f}x (floor)"
        else:
            time_target, rss_target = TARGETS[name]
            time_ratio, rss_ratio = mark(ms / base_ms, time_target), mark(mb / base_mb, rss_target)
        lines.append(f"{name:<14} {ready:8.0f} {ms:8.0f}  {time_ratio:<24} {mb:7.1f}  {rss_ratio}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description="Cold start and peak RSS of each function.")
    parser.add_argument("--runs", type=int, default=5, help="measured runs per function")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured runs first (pyc, disk)")
    parser.add_argument("--only", default="", help="comma-separated functions (hello always runs)")
    parser.add_argument(
        "--bundles", action="store_true", help="start the built bundles, each in its own virtualenv"
    )
    parser.add_argument(
        "--floors", action="store_true", help="add the floors in bench/floors (not with --bundles)"
    )
    args = parser.parse_args()
    if args.floors and args.bundles:
        parser.error("the floors are not bundled; run --floors from the checkout")
    names = [n for n in FUNCTIONS if not args.only or n in args.only.split(",")]
    names = [n for n in names if source_of(n).exists()]
    if args.floors:
        names = [*FLOORS, *names]

    from tests.support.fake_openai import FakeOpenAIServer

    with tempfile.TemporaryDirectory(prefix="stratus-bench-") as tmp, FakeOpenAIServer() as fake:
        workdir = Path(tmp)
        env = child_env(workdir, fake.base_url)
        fixtures = Fixtures(env)
        log = workdir / "functions.log"
        launches = (
            bundle_launches(names, workdir)
            if args.bundles
            else {name: dev_launch(name) for name in [BASELINE, *names]}
        )
        probes = {name: probe_for(name, fixtures) for name in [BASELINE, *names]}
        results: dict[str, list[Sample]] = {name: [] for name in probes}
        errors: dict[str, str] = {}
        for run in range(args.warmup + args.runs):
            for name, probe in probes.items():  # interleaved, so drift hits every function alike
                if name in errors:
                    continue
                try:
                    sample = measure(name, probe(), env, log, launches[name])
                except RuntimeError as exc:
                    errors[name] = str(exc)
                    results.pop(name, None)
                    continue
                if run >= args.warmup:
                    results[name].append(sample)
        if BASELINE in errors:
            print(f"hello world failed: {errors[BASELINE]}\n{log.read_text()[-3000:]}")
            return 0
        print(f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, SQLite, bcrypt rounds 4")
        where = "bundles, each in its own virtualenv" if args.bundles else "the checkout (.venv)"
        print(f"functions started from {where}")
        print(report(results, args.runs))
        for name, error in errors.items():
            print(f"{name}: FAILED: {error}")
        if errors:
            print(f"--- last lines of the functions' output ---\n{log.read_text()[-3000:]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
