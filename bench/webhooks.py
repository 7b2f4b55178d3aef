"""Webhook throughput on PostgreSQL, beside a bare functions-framework hello world.

Each function is started as Cloud Functions' Python runtime starts it (`functions-framework
--target NAME`, gunicorn with its default threads) against a new PostgreSQL database that holds
what a live service holds (`--stored`: 20,000 subscriptions and 100,000 past events), and
loaded over real HTTP (keep-alive connections from client threads) for a fixed time after a
warm-up. Measured in the same run:

- hello: `GET /` of `bench/hello/main.py` (the baseline: requests/s);
- stripe_webhook: distinct, signed `customer.subscription.updated` events for subscriptions of
  one user (each one verified, stored by id and applied in its transaction): events/s;
- sendgrid_webhook: signed batches of 1,000 distinct events (verified, stored once each):
  events/s;
- with `--floors`, bench/webhook_floor/main.py: the Stripe request checked and answered with
  no database, with one INSERT in a transaction of its own, and with the INSERTs of the events
  waiting together in one group-committed transaction, as stripe_webhook commits.

The target is a Stripe webhook throughput of at least 40 % of hello's request rate. A
function's ratio is the median over rounds of its rate over hello's rate in the same round
(paired: the machine's speed drifts by more than the differences measured, and a pair of runs
a few seconds apart shares most of it); the rates shown are each function's median round. It
is a measurement: it prints the table and never fails on a missed target.

    .venv/bin/python bench/webhooks.py [--seconds 8] [--connections 8] [--warmup 2]

PostgreSQL comes from `STRATUS_TEST_POSTGRES_URL` (default: the local server, database
`test`), as for the tests; a throwaway database is created on it and dropped afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.client import HTTPConnection
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.support.*, when run as a script

from bench.processes import free_port, stop_group  # noqa: E402

STRIPE_SECRET = "whsec_bench_" + "b" * 32
TARGET_RATIO = 0.40
FLOORS = ("verify_only", "verify_and_insert", "verify_and_batched_insert")  # bench/webhook_floor
SUBSCRIPTIONS = 64  # events spread over these, as a busy account's would be
START_TIMEOUT = 60.0

Request = tuple[str, str, dict[str, str], bytes | None]  # method, path, headers, body


@dataclass
class Result:
    name: str
    requests: int
    events: int
    seconds: float
    latencies_ms: list[float]
    errors: int

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@contextmanager
def postgres_database() -> Iterator[str]:
    """A new database on the configured PostgreSQL server, migrated; dropped afterwards."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    from tests.support.postgres import provide_postgres

    with provide_postgres() as admin_url:
        name = f"stratus_bench_{uuid.uuid4().hex[:8]}"
        admin = create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield admin_url.rsplit("/", 1)[0] + "/" + name
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()


def prepare(database_url: str, stored: int) -> str:
    """Migrate, create a user whose Stripe customer the events name, and store `stored`
    other subscriptions and five times as many past events, as a live service holds; the customer
    id. An event's cost must not grow with what is stored, and only a full table shows it."""
    os.environ["DATABASE_URL"] = database_url
    from sqlalchemy import text

    from shared_layer.config import reset_settings
    from shared_layer.database import get_engine, reset_engine, session_scope
    from shared_layer.migrate import upgrade
    from shared_layer.models import BillingCustomer, User

    reset_settings()
    reset_engine()
    upgrade(get_engine())
    customer = "cus_bench"
    with session_scope() as session:
        user = User(email="bench@example.com", password_hash="unusable")  # noqa: S106
        session.add(user)
        session.flush()
        session.add(BillingCustomer(user_id=user.id, stripe_customer_id=customer))
        session.execute(
            text(
                "INSERT INTO subscriptions (id, user_id, stripe_customer_id, status, version, "
                "cancel_at_period_end, created_at, updated_at) SELECT 'sub_stored_' || g, "
                ":user_id, 'cus_stored', 'active', 1, false, now(), now() "
                "FROM generate_series(1, :n) g"
            ),
            {"user_id": user.id, "n": stored},
        )
        session.execute(
            text(
                "INSERT INTO stripe_events (id, type, created, livemode, outcome, payload, "
                "received_at) SELECT 'evt_stored_' || g, 'customer.updated', now(), false, "
                "'ignored', CAST('{\"object\": \"event\"}' AS json), now() "
                "FROM generate_series(1, :n) g"
            ),
            {"n": stored * 5},
        )
    with get_engine().connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("ANALYZE"))
    reset_engine()
    return customer


def stripe_requests(customer: str, count: int, prefix: str = "") -> list[Request]:
    from tests.support.fake_stripe import event, subscription

    statuses = ("active", "active", "active", "past_due", "trialing")
    start = int(time.time()) - 3600
    requests: list[Request] = []
    for i in range(count):
        obj = subscription(
            f"sub_bench_{i % SUBSCRIPTIONS}",
            customer,
            status=statuses[i % len(statuses)],
            price="price_pro" if i % 2 else "price_team",
            period_end=start + 86_400 * 30 + i,
        )
        evt = event("customer.subscription.updated", obj, created=start + i)
        if prefix:  # the floors store events too: ids of their own
            evt["id"] = f"evt_{prefix}_{evt['id'].removeprefix('evt_')}"
        requests.append(
            ("POST", "/", {"Content-Type": "application/json"}, json.dumps(evt).encode())
        )
    return requests


def stripe_signed(body: bytes) -> dict[str, str]:
    from tests.support.fake_stripe import stripe_signature

    return {"Stripe-Signature": stripe_signature(body, STRIPE_SECRET)}


def sendgrid_requests(batches: int, size: int = 1000) -> list[Request]:
    from tests.support.fake_sendgrid import sendgrid_event

    kinds = ("processed", "delivered", "open", "click", "bounce")
    requests: list[Request] = []
    for b in range(batches):
        batch = [
            sendgrid_event(
                f"user{i % 500}@example.com", kinds[i % len(kinds)], sg_event_id=f"b{b}-{i}"
            )
            for i in range(size)
        ]
        requests.append(("POST", "/", {}, json.dumps(batch).encode()))
    return requests


@contextmanager
def serving(name: str, source: Path, env: dict[str, str], log: Path) -> Iterator[int]:
    port = free_port()
    command = [
        str(Path(sys.executable).with_name("functions-framework")),
        "--target", name,
        "--source", str(source),
        "--host", "127.0.0.1",
        "--port", str(port),
    ]  # fmt: skip
    with log.open("ab") as out:
        process = subprocess.Popen(
            command, env=env, cwd=ROOT, stdout=out, stderr=out, start_new_session=True
        )
    try:
        deadline = time.perf_counter() + START_TIMEOUT
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}; see {log}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"{name} did not listen in {START_TIMEOUT:.0f} s") from None
                time.sleep(0.05)
        yield port
    finally:
        stop_group(process)


def load(
    name: str,
    port: int,
    next_request: Callable[[], Request | None],
    *,
    seconds: float,
    connections: int,
    events_per_request: int,
    ok: Callable[[int, bytes], bool],
) -> Result:
    """Send requests from `connections` threads for `seconds`; count the answers `ok` accepts."""
    lock = threading.Lock()
    latencies: list[float] = []
    counts = {"ok": 0, "errors": 0}
    stop_at = time.perf_counter() + seconds

    def worker() -> None:
        connection = HTTPConnection("127.0.0.1", port, timeout=60)
        mine: list[float] = []
        good = bad = 0
        while time.perf_counter() < stop_at:
            request = next_request()
            if request is None:
                break
            method, path, headers, body = request
            began = time.perf_counter()
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            payload = response.read()
            mine.append((time.perf_counter() - began) * 1000)
            if ok(response.status, payload):
                good += 1
            else:
                bad += 1
        connection.close()
        with lock:
            latencies.extend(mine)
            counts["ok"] += good
            counts["errors"] += bad

    threads = [threading.Thread(target=worker) for _ in range(connections)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    return Result(
        name, counts["ok"], counts["ok"] * events_per_request, elapsed, latencies, counts["errors"]
    )


def median_result(samples: list[Result]) -> Result:
    """The round with the median event rate (its latencies and errors with it)."""
    return sorted(samples, key=lambda r: r.events_per_s)[len(samples) // 2]


def feeder(
    requests: list[Request], sign: Callable[[bytes], dict[str, str]] | None = None
) -> Callable[[], Request | None]:
    """Each request once, in order, across threads; None when they run out. `sign` adds the
    signature headers as the request is sent: signed in advance, the last rounds' requests
    would be older than the webhooks' 300 s tolerance, and refused."""
    lock = threading.Lock()
    position = iter(requests)

    def take() -> Request | None:
        with lock:
            request = next(position, None)
        if request is None or sign is None:
            return request
        method, path, headers, body = request
        assert body is not None
        return method, path, {**headers, **sign(body)}, body

    return take


def child_env(database_url: str, public_key: str, monitoring: bool) -> dict[str, str]:
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env.update(
        STRATUS_ENV="local",
        DATABASE_URL=database_url,
        JWT_SECRET="bench-" + "z" * 40,
        STRIPE_WEBHOOK_SECRET=STRIPE_SECRET,
        STRIPE_PRICE_PRO="price_pro",
        STRIPE_PRICE_TEAM="price_team",
        SENDGRID_WEBHOOK_PUBLIC_KEY=public_key,
        MONITORING_ENABLED="true" if monitoring else "false",
    )
    return env


def paired_ratios(samples: list[Result], base: list[Result]) -> list[float]:
    """Round by round, the function's event rate over hello's request rate."""
    return [s.events_per_s / b.requests_per_s for s, b in zip(samples, base, strict=True)]


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def report(results: list[Result], ratios: list[float], connections: int) -> str:
    """The table: each function's median round, and its median paired ratio to hello."""
    width = max(len("function"), *(len(r.name) for r in results))
    lines = [
        f"{'function':<{width}} {'requests/s':>10} {'events/s':>10} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'errors':>6}  vs hello requests/s",
    ]
    for result, ratio in zip(results, ratios, strict=True):
        verdict = ""
        if result.name == "stripe_webhook":
            verdict = f"  {'PASS' if ratio >= TARGET_RATIO else 'MISS'} (>= {TARGET_RATIO:.0%})"
        vs = "baseline" if result is results[0] else f"{ratio:6.1%}{verdict}"
        lines.append(
            f"{result.name:<{width}} {result.requests_per_s:10.0f} {result.events_per_s:10.0f} "
            f"{result.percentile(0.5):8.1f} {result.percentile(0.99):8.1f} {result.errors:6d}  {vs}"
        )
    lines.append(f"({connections} keep-alive connections; events/s counts verified, stored events)")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description="Webhook throughput beside a hello world.")
    parser.add_argument("--seconds", type=float, default=8.0, help="measured time per function")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured time first")
    parser.add_argument("--connections", type=int, default=8, help="concurrent connections")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians shown")
    parser.add_argument(
        "--floors",
        action="store_true",
        help="also run bench/webhook_floor: verify only, verify + one INSERT per event, and "
        "verify + INSERTs group-committed as stripe_webhook commits",
    )
    parser.add_argument(
        "--stored",
        type=int,
        default=20_000,
        help="subscriptions stored before the run (and five times as many past events)",
    )
    parser.add_argument(
        "--no-monitoring", action="store_true", help="MONITORING_ENABLED=false in the functions"
    )
    args = parser.parse_args()

    from tests.support.fake_sendgrid import EventSigner

    signer = EventSigner()
    log = Path(tempfile.gettempdir()) / f"stratus-bench-webhooks-{os.getpid()}.log"
    with postgres_database() as database_url:
        customer = prepare(database_url, args.stored)
        env = child_env(database_url, signer.public_key, not args.no_monitoring)
        budget = int((args.seconds + args.warmup) * 4000 * args.rounds)  # more than runs send
        runs: list[
            tuple[str, Path, Callable[[], Request | None], int, Callable[[int, bytes], bool]]
        ] = [
            (
                "hello",
                ROOT / "bench/hello/main.py",
                lambda: ("GET", "/", {}, None),
                1,
                lambda status, _: status == 200,
            ),
            (
                "stripe_webhook",
                ROOT / "functions/stripe_webhook/main.py",
                feeder(stripe_requests(customer, budget), stripe_signed),
                1,
                lambda status, body: status == 200 and not json.loads(body)["duplicate"],
            ),
            *(
                (
                    floor,
                    ROOT / "bench/webhook_floor/main.py",
                    feeder(stripe_requests(customer, budget, prefix=floor), stripe_signed),
                    1,
                    lambda status, body: status == 200 and not json.loads(body)["duplicate"],
                )
                for floor in (FLOORS if args.floors else ())
            ),
            (
                "sendgrid_webhook",
                ROOT / "functions/sendgrid_webhook/main.py",
                feeder(sendgrid_requests(max(20, budget // 400)), signer.headers),
                1000,
                lambda status, body: status == 200 and json.loads(body)["stored"] == 1000,
            ),
        ]
        rounds: dict[str, list[Result]] = {name: [] for name, *_ in runs}
        for _ in range(args.rounds):  # interleaved, so drift on the machine hits each alike
            for name, source, next_request, per_request, ok in runs:
                with serving(name, source, env, log) as port:
                    common = {
                        "connections": args.connections,
                        "events_per_request": per_request,
                        "ok": ok,
                    }
                    load(name, port, next_request, seconds=args.warmup, **common)
                    rounds[name].append(
                        load(name, port, next_request, seconds=args.seconds, **common)
                    )
    results = [median_result(samples) for samples in rounds.values()]
    hello = rounds["hello"]
    ratios = [median(paired_ratios(samples, hello)) for samples in rounds.values()]
    print(
        f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, PostgreSQL, "
        f"monitoring {'off' if args.no_monitoring else 'on'}, {args.seconds:.0f} s per function, "
        f"median of {args.rounds} interleaved rounds, {args.stored:,} subscriptions and "
        f"{5 * args.stored:,} events stored before"
    )
    print(report(results, ratios, args.connections))
    stripe = paired_ratios(rounds["stripe_webhook"], hello)
    print(
        f"stripe_webhook verified events/s = {median(stripe):.1%} of hello's requests/s "
        f"(target >= {TARGET_RATIO:.0%}); round by round: "
        + ", ".join(f"{ratio:.1%}" for ratio in stripe)
    )
    if any(r.errors for r in results):
        print(f"some answers were not the expected 200; see {log}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
