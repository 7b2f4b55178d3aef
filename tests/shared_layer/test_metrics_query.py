"""Performance statistics: exact numbers on both backends, SQL and Python percentiles agreeing
on the same rows, windows and their limits."""

from __future__ import annotations

import itertools
import random
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, text

from shared_layer.database import session_scope
from shared_layer.errors import InvalidInput
from shared_layer.metrics_query import (
    bucket_seconds,
    percentile_cont,
    performance_report,
    resolve_window,
    routes_in_python,
)
from shared_layer.models import Agent, ApiCallMetric, TaskMetric, User
from shared_layer.schemas.monitoring import MetricsQuery

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def test_percentile_cont_interpolates_between_the_nearest_ranks_like_postgresql():
    assert percentile_cont([], 0.5) is None
    assert percentile_cont([7.0], 0.99) == 7.0
    assert percentile_cont([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert percentile_cont([1.0, 2.0, 3.0, 4.0], 0.95) == pytest.approx(3.85)
    assert percentile_cont([float(v) for v in range(1, 101)], 0.99) == pytest.approx(99.01)


def _seed(now: datetime) -> uuid.UUID:
    """Route A: 100 calls at 1..100 ms, 5 of them 500s and 10 of them 404s; route B: 4 calls;
    one call outside the window. Tasks: agent "writer" on gpt-4o-mini, 3 of 4 succeeded."""
    with session_scope() as session:
        owner = User(email=f"o-{uuid.uuid4().hex[:8]}@example.com", password_hash="x")
        session.add(owner)
        session.flush()
        agent = Agent(owner_id=owner.id, name="writer")
        session.add(agent)
        session.flush()
        for i in range(1, 101):
            status = 500 if i % 20 == 0 else 404 if i % 10 == 0 else 200
            session.add(
                ApiCallMetric(
                    created_at=now - timedelta(minutes=i),
                    function="agents",
                    route="/agents/{agent_id}",
                    method="GET",
                    status_code=status,
                    duration_ms=float(i),
                )
            )
        for i, duration in enumerate((10.0, 20.0, 30.0, 40.0)):
            session.add(
                ApiCallMetric(
                    created_at=now - timedelta(minutes=5 + i),
                    function="auth",
                    route="/login",
                    method="POST",
                    status_code=200,
                    duration_ms=duration,
                )
            )
        session.add(
            ApiCallMetric(
                created_at=now - timedelta(days=3),
                function="auth",
                route="/login",
                method="POST",
                status_code=500,
                duration_ms=9999.0,
            )
        )
        for i, status in enumerate(("succeeded", "succeeded", "failed", "succeeded")):
            session.add(
                TaskMetric(
                    created_at=now - timedelta(minutes=30 + i),
                    task_id=uuid.uuid4(),
                    agent_id=agent.id,
                    user_id=owner.id,
                    provider="openai",
                    model="gpt-4o-mini",
                    status=status,
                    attempts=1,
                    queue_wait_ms=10.0 * (i + 1),
                    run_ms=100.0 * (i + 1),
                    prompt_tokens=100,
                    completion_tokens=50,
                    cost_micros=45,
                )
            )
        return agent.id


def test_report_gives_the_same_exact_numbers_on_both_backends(db):
    agent_id = _seed(NOW)
    with session_scope() as session:
        report = performance_report(session, start=NOW - timedelta(hours=24), end=NOW)
    assert report.computed_by == ("sql" if db.dialect.name == "postgresql" else "python")
    assert [(r.function, r.route) for r in report.routes] == [
        ("agents", "/agents/{agent_id}"),
        ("auth", "/login"),
    ]
    a, b = report.routes
    assert (a.count, a.server_errors, a.client_errors, a.error_rate) == (100, 5, 5, 0.05)
    assert (a.p50_ms, a.p95_ms, a.p99_ms) == (50.5, 95.05, 99.01)
    assert (b.count, b.server_errors, b.p50_ms, b.p95_ms, b.p99_ms) == (4, 0, 25.0, 38.5, 39.7)
    [tasks] = report.tasks
    assert (tasks.agent_id, tasks.agent_name, tasks.model) == (agent_id, "writer", "gpt-4o-mini")
    assert (tasks.count, tasks.succeeded, tasks.failed, tasks.success_rate) == (4, 3, 1, 0.75)
    assert (tasks.mean_run_ms, tasks.mean_queue_wait_ms) == (250.0, 25.0)
    assert (tasks.prompt_tokens, tasks.completion_tokens, tasks.total_tokens) == (400, 200, 600)
    assert tasks.cost_micros == 180
    assert report.totals.model_dump() == {
        "requests": 104,
        "server_errors": 5,
        "error_rate": round(5 / 104, 6),
        "tasks": 4,
        "tasks_succeeded": 3,
        "cost_micros": 180,
    }
    assert report.bucket_seconds == 900
    assert sum(p.requests for p in report.series) == 104
    assert sum(p.server_errors for p in report.series) == 5
    assert sum(p.tasks_succeeded for p in report.series) == 3
    assert sum(p.tasks_failed for p in report.series) == 1
    starts = [p.start for p in report.series]
    assert starts == sorted(starts)
    assert all((b - a) == timedelta(seconds=900) for a, b in itertools.pairwise(starts))
    empty = [p for p in report.series if p.requests == 0]
    assert empty
    assert all(p.p50_ms is None for p in empty)  # no traffic, not zero latency


def test_sql_and_python_percentiles_agree_on_the_same_rows(pg):
    rng = random.Random(4)
    with session_scope() as session:
        for _ in range(1500):
            session.add(
                ApiCallMetric(
                    created_at=NOW - timedelta(seconds=rng.randint(1, 86_000)),
                    function=rng.choice(["agents", "auth", "health"]),
                    route=rng.choice(["/a", "/b/{id}", "/c"]),
                    method=rng.choice(["GET", "POST"]),
                    status_code=rng.choice([200, 200, 201, 404, 500]),
                    duration_ms=rng.lognormvariate(3, 1),
                )
            )
    start, end = NOW - timedelta(hours=24), NOW
    with session_scope() as session:
        in_sql = performance_report(session, start=start, end=end)
        rows = session.execute(
            select(
                ApiCallMetric.function,
                ApiCallMetric.method,
                ApiCallMetric.route,
                ApiCallMetric.status_code,
                ApiCallMetric.duration_ms,
            ).where(ApiCallMetric.created_at >= start, ApiCallMetric.created_at < end)
        ).all()
        raw = session.execute(
            text(
                "SELECT function, method, route, percentile_cont(0.95) WITHIN GROUP "
                "(ORDER BY duration_ms) FROM api_call_metrics GROUP BY 1, 2, 3"
            )
        ).all()
    assert in_sql.computed_by == "sql"
    assert routes_in_python(rows) == in_sql.routes  # every field, rounded the same way
    for function, method, route, p95 in raw:  # and unrounded, to float precision
        durations = sorted(r[4] for r in rows if (r[0], r[1], r[2]) == (function, method, route))
        assert percentile_cont(durations, 0.95) == pytest.approx(p95, rel=1e-12)


def test_a_window_with_no_metrics_gives_empty_lists_and_zero_totals(db):
    with session_scope() as session:
        report = performance_report(session, start=NOW - timedelta(hours=1), end=NOW)
    assert (report.routes, report.tasks) == ([], [])
    assert report.totals.requests == 0
    assert report.totals.error_rate == 0.0
    assert len(report.series) == 61  # 1-minute points, empty ones included


@pytest.mark.parametrize(
    ("window", "hours", "bucket"),
    [("15m", 0.25, 60), ("1h", 1, 60), ("24h", 24, 900), ("7d", 168, 7200), ("30d", 720, 21600)],
)
def test_windows_resolve_to_their_range_and_a_bucket_of_at_most_120_points(window, hours, bucket):
    start, end = resolve_window(MetricsQuery(window=window), now=NOW)
    assert (end, end - start) == (NOW, timedelta(hours=hours))
    assert bucket_seconds(start, end) == bucket
    assert (end - start).total_seconds() / bucket <= 120


def test_explicit_ranges_are_checked():
    week = NOW - timedelta(days=7)
    assert resolve_window(MetricsQuery(start=week), now=NOW) == (week, NOW)
    with pytest.raises(InvalidInput, match="after start"):
        resolve_window(MetricsQuery(start=NOW, end=NOW), now=NOW)
    with pytest.raises(InvalidInput, match="longer than 31 days"):
        resolve_window(MetricsQuery(start=NOW - timedelta(days=40)), now=NOW)
    with pytest.raises(InvalidInput, match="future"):
        resolve_window(MetricsQuery(start=week, end=NOW + timedelta(days=1)), now=NOW)
