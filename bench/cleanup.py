"""metrics_cleanup's batched delete against one raw DELETE of the same rows, on PostgreSQL.

A throwaway database is created and migrated; `api_call_metrics` gets 2,000,000 rows spread
over 60 days (ids growing with time, as in production), so that with the 30-day retention
1,000,000 are expired. Each round loads the table afresh (same rows, VACUUM ANALYZE,
CHECKPOINT, autovacuum off for the table so it cannot run in the middle) and then times either

    raw:      DELETE FROM api_call_metrics WHERE created_at < :cutoff      (one transaction)
    cleanup:  shared_layer.maintenance.run_cleanup()                       (the real code path)

Rounds alternate raw / cleanup, so both see the same state of caches; the medians and their
ratio are printed, with the longest single cleanup batch (its transaction time). Targets:
ratio <= 1.5 and longest batch <= 1 s. A measurement: it never fails on a missed target.

    .venv/bin/python bench/cleanup.py [--rounds 2] [--rows 2000000]
        [--admin-url postgresql+pg8000://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.pool import NullPool

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DAYS = 60
RETENTION_DAYS = 30
TARGET_RATIO = 1.5
TARGET_LONGEST_BATCH_MS = 1000.0

LOAD = """
INSERT INTO api_call_metrics
    (created_at, function, route, method, status_code, duration_ms, user_id, execution_id)
SELECT
    CAST(:now AS timestamptz) - (:rows - g + 1) * (CAST(:span AS interval) / :rows),
    (ARRAY['agents', 'auth', 'health', 'billing'])[1 + mod(g, 4)],
    (ARRAY['/agents', '/agents/{agent_id}', '/tasks/{task_id}', '/login'])[1 + mod(g, 4)],
    (ARRAY['GET', 'POST', 'PATCH'])[1 + mod(g, 3)],
    CASE WHEN mod(g, 50) = 0 THEN 500 WHEN mod(g, 10) = 0 THEN 404 ELSE 200 END,
    mod(g, 997) * 0.25,
    NULL,
    'exec-' || mod(g, 100000)
FROM generate_series(1, :rows) AS g
"""


def load(engine: Engine, rows: int, now: datetime) -> int:
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE api_call_metrics, task_metrics RESTART IDENTITY"))
        conn.execute(text(LOAD), {"now": now, "rows": rows, "span": f"{DAYS} days"})
    plain = create_engine(engine.url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with plain.connect() as conn:
        conn.execute(text("VACUUM ANALYZE api_call_metrics"))
        conn.execute(text("CHECKPOINT"))
        cutoff = now - timedelta(days=RETENTION_DAYS)
        expired = conn.execute(
            text("SELECT count(*) FROM api_call_metrics WHERE created_at < :c"), {"c": cutoff}
        ).scalar_one()
    plain.dispose()
    return int(expired)


def raw_delete(engine: Engine, now: datetime) -> tuple[float, int]:
    cutoff = now - timedelta(days=RETENTION_DAYS)
    started = time.perf_counter()
    with engine.begin() as conn:
        deleted = conn.execute(
            text("DELETE FROM api_call_metrics WHERE created_at < :c"), {"c": cutoff}
        ).rowcount
    return time.perf_counter() - started, deleted


def cleanup(now: datetime) -> tuple[float, int, float, int]:
    from shared_layer.maintenance import run_cleanup

    started = time.perf_counter()
    report = run_cleanup(now=now)
    elapsed = time.perf_counter() - started
    return elapsed, report.deleted["api_call_metrics"], report.longest_batch_ms, report.batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument(
        "--admin-url",
        default=os.environ.get(
            "STRATUS_TEST_POSTGRES_URL", "postgresql+pg8000://postgres@127.0.0.1:5432/test"
        ),
    )
    args = parser.parse_args()

    name = f"stratus_bench_cleanup_{uuid.uuid4().hex[:8]}"
    admin = create_engine(args.admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = args.admin_url.rsplit("/", 1)[0] + "/" + name
    os.environ.update(DATABASE_URL=url, STRATUS_ENV="local", LOG_LEVEL="WARNING")
    os.environ.setdefault("JWT_SECRET", "bench-" + "x" * 40)
    try:
        from shared_layer.config import get_settings
        from shared_layer.database import get_engine
        from shared_layer.logging_config import configure_logging
        from shared_layer.migrate import upgrade

        configure_logging()
        engine = get_engine()
        upgrade(engine)
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE api_call_metrics SET (autovacuum_enabled = false)"))
        settings = get_settings()
        now = datetime.now(UTC)
        raw_times: list[float] = []
        cleanup_times: list[float] = []
        longest: list[float] = []
        batch, seconds = settings.metrics_cleanup_batch_size, settings.metrics_cleanup_batch_seconds
        print(
            f"PostgreSQL {engine.dialect.server_version_info}; {args.rows:,} rows over {DAYS} "
            f"days, retention {RETENTION_DAYS} days; batch size {batch}, target batch {seconds} s\n"
        )
        print(
            f"{'round':>5} {'mode':>8} {'expired':>10} {'deleted':>10} {'seconds':>8} "
            f"{'batches':>8} {'longest batch ms':>17}"
        )
        for round_ in range(1, args.rounds + 1):
            for mode in ("raw", "cleanup") if round_ % 2 else ("cleanup", "raw"):
                expired = load(engine, args.rows, now)
                if mode == "raw":
                    seconds, deleted = raw_delete(engine, now)
                    raw_times.append(seconds)
                    batches, batch_ms = 1, seconds * 1000
                else:
                    seconds, deleted, batch_ms, batches = cleanup(now)
                    cleanup_times.append(seconds)
                    longest.append(batch_ms)
                assert deleted == expired, f"{mode} deleted {deleted} of {expired} expired rows"
                print(
                    f"{round_:>5} {mode:>8} {expired:>10,} {deleted:>10,} {seconds:>8.2f} "
                    f"{batches:>8} {batch_ms:>17.1f}"
                )
        raw, batched = statistics.median(raw_times), statistics.median(cleanup_times)
        ratio, worst = batched / raw, max(longest)
        print(f"\nmedian raw DELETE {raw:.2f} s; median cleanup {batched:.2f} s")
        print(
            f"ratio cleanup/raw {ratio:.2f} (target <= {TARGET_RATIO}): "
            f"{'met' if ratio <= TARGET_RATIO else 'MISSED'}"
        )
        print(
            f"longest cleanup batch {worst:.0f} ms (target <= {TARGET_LONGEST_BATCH_MS:.0f}): "
            f"{'met' if worst <= TARGET_LONGEST_BATCH_MS else 'MISSED'}"
        )
        engine.dispose()
    finally:
        from shared_layer.database import reset_engine

        reset_engine()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    main()
