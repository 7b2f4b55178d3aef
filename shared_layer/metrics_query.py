"""Performance statistics over a time window, from the metrics tables.

On PostgreSQL everything is computed in SQL, percentiles with `percentile_cont` (continuous,
interpolated). SQLite has no ordered-set aggregates, so there the window's API-call rows are
read once and `percentile_cont` below computes the same interpolation in Python; a test checks
that both give the same numbers on the same rows. Task statistics are plain aggregates, SQL on
both.
"""

from __future__ import annotations

import math
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Float, Integer, case, cast, func, literal_column, select
from sqlalchemy.orm import Session

from shared_layer.config import get_settings
from shared_layer.errors import InvalidInput
from shared_layer.models import Agent, ApiCallMetric, TaskMetric
from shared_layer.schemas.monitoring import (
    WINDOWS,
    MetricsQuery,
    MetricsTotals,
    PerformanceReport,
    RouteStats,
    SeriesPoint,
    TaskStats,
)

QUANTILES = (0.5, 0.95, 0.99)
BUCKETS_SECONDS = (60, 300, 900, 1800, 3600, 7200, 14400, 21600, 43200, 86400)
MAX_POINTS = 120
_FUTURE_SLACK = timedelta(minutes=5)


def percentile_cont(ordered: Sequence[float], fraction: float) -> float | None:
    """PostgreSQL's `percentile_cont`: linear interpolation between the two nearest ranks."""
    if not ordered:
        return None
    rank = fraction * (len(ordered) - 1)
    low, high = math.floor(rank), math.ceil(rank)
    first, second = ordered[low], ordered[high]
    return first + (second - first) * (rank - low)


def window_ending_now(*, hours: float) -> tuple[datetime, datetime]:
    end = datetime.now(UTC)
    return end - timedelta(hours=hours), end


def resolve_window(
    query: MetricsQuery, *, now: datetime | None = None
) -> tuple[datetime, datetime]:
    """The [start, end) a query asks for; `InvalidInput` for an empty, reversed or too-long
    range or one that ends in the future."""
    now = now or datetime.now(UTC)
    if query.start is None:
        return now - WINDOWS[query.window or "24h"], now
    start, end = query.start, query.end or now  # the query's are in UTC already
    longest = timedelta(days=get_settings().metrics_max_range_days)
    if end <= start:
        raise InvalidInput("end must be after start")
    if end - start > longest:
        raise InvalidInput(f"the range is longer than {longest.days} days (METRICS_MAX_RANGE_DAYS)")
    if end > now + _FUTURE_SLACK:
        raise InvalidInput("end is in the future")
    return start, end


def bucket_seconds(start: datetime, end: datetime) -> int:
    span = (end - start).total_seconds()
    for size in BUCKETS_SECONDS:
        if span / size <= MAX_POINTS:
            return size
    return BUCKETS_SECONDS[-1]


def performance_report(session: Session, *, start: datetime, end: datetime) -> PerformanceReport:
    bucket = bucket_seconds(start, end)
    in_sql = session.get_bind().dialect.name == "postgresql"
    if in_sql:
        routes = _routes_sql(session, start, end)
        api_series = _api_series_sql(session, start, end, bucket)
    else:
        rows = session.execute(
            select(
                ApiCallMetric.function,
                ApiCallMetric.method,
                ApiCallMetric.route,
                ApiCallMetric.status_code,
                ApiCallMetric.duration_ms,
                ApiCallMetric.created_at,
            ).where(ApiCallMetric.created_at >= start, ApiCallMetric.created_at < end)
        ).all()
        routes = routes_in_python(rows)
        api_series = api_series_in_python(rows, start=start, bucket=bucket)
    tasks = _task_stats(session, start, end)
    task_series = _task_series(session, start, end, bucket)
    series = _merge_series(start, end, bucket, api_series, task_series)
    requests = sum(r.count for r in routes)
    errors = sum(r.server_errors for r in routes)
    totals = MetricsTotals(
        requests=requests,
        server_errors=errors,
        error_rate=_ratio(errors, requests),
        tasks=sum(t.count for t in tasks),
        tasks_succeeded=sum(t.succeeded for t in tasks),
        cost_micros=sum(t.cost_micros for t in tasks),
    )
    return PerformanceReport(
        start=start,
        end=end,
        bucket_seconds=bucket,
        computed_by="sql" if in_sql else "python",
        totals=totals,
        routes=routes,
        tasks=tasks,
        series=series,
    )


# -- API calls: SQL (PostgreSQL) -----------------------------------------------------------


def _quantile_columns() -> list[Any]:
    return [
        func.percentile_cont(q).within_group(ApiCallMetric.duration_ms.asc()) for q in QUANTILES
    ]


def _error_counts() -> list[Any]:
    status = ApiCallMetric.status_code
    return [
        func.sum(case((status >= 500, 1), else_=0)),
        func.sum(case((status.between(400, 499), 1), else_=0)),
    ]


def _routes_sql(session: Session, start: datetime, end: datetime) -> list[RouteStats]:
    keys = (ApiCallMetric.function, ApiCallMetric.method, ApiCallMetric.route)
    statement = (
        select(*keys, func.count(), *_error_counts(), *_quantile_columns())
        .where(ApiCallMetric.created_at >= start, ApiCallMetric.created_at < end)
        .group_by(*keys)
    )
    stats = [
        _route_stats(fn, method, route, count, server, client, (p50, p95, p99))
        for fn, method, route, count, server, client, p50, p95, p99 in session.execute(statement)
    ]
    return sorted(stats, key=_route_order)


def epoch_bucket(column: Any, bucket: int, dialect: str) -> Any:
    """The start (epoch seconds) of the `bucket`-second slot a timestamp falls in. The size is
    written into the SQL (an int from BUCKETS_SECONDS), so that the GROUP BY expression is the
    selected one (two bound parameters would be two expressions to PostgreSQL). SQLite keeps
    UTC timestamps as `YYYY-MM-DD HH:MM:SS.ffffff` text, which `strftime('%s', …)` reads."""
    size = literal_column(str(int(bucket)), Integer)
    if dialect == "postgresql":
        epoch = func.extract("epoch", column)
        return (func.floor(epoch / size) * size).label("bucket")
    seconds = cast(func.strftime("%s", column), Integer)
    return ((seconds // size) * size).label("bucket")


def _api_series_sql(
    session: Session, start: datetime, end: datetime, bucket: int
) -> dict[int, tuple[int, int, tuple[float | None, ...]]]:
    slot = epoch_bucket(ApiCallMetric.created_at, bucket, "postgresql")
    statement = (
        select(slot, func.count(), _error_counts()[0], *_quantile_columns())
        .where(ApiCallMetric.created_at >= start, ApiCallMetric.created_at < end)
        .group_by(slot)
    )
    return {
        int(at): (int(count), int(errors), (p50, p95, p99))
        for at, count, errors, p50, p95, p99 in session.execute(statement)
    }


# -- API calls: Python (SQLite) ------------------------------------------------------------


def routes_in_python(rows: Iterable[Sequence[Any]]) -> list[RouteStats]:
    """Route statistics from (function, method, route, status_code, duration_ms, …) rows."""
    groups: dict[tuple[str, str, str], list[tuple[int, float]]] = defaultdict(list)
    for function, method, route, status, duration, *_ in rows:
        groups[(function, method, route)].append((status, duration))
    stats = []
    for (function, method, route), calls in groups.items():
        ordered = sorted(duration for _, duration in calls)
        server = sum(1 for status, _ in calls if status >= 500)
        client = sum(1 for status, _ in calls if 400 <= status <= 499)
        quantiles = tuple(percentile_cont(ordered, q) for q in QUANTILES)
        stats.append(_route_stats(function, method, route, len(calls), server, client, quantiles))
    return sorted(stats, key=_route_order)


def api_series_in_python(
    rows: Iterable[Sequence[Any]], *, start: datetime, bucket: int
) -> dict[int, tuple[int, int, tuple[float | None, ...]]]:
    slots: dict[int, list[tuple[int, float]]] = defaultdict(list)
    for *_, status, duration, created_at in rows:
        slots[int(created_at.timestamp()) // bucket * bucket].append((status, duration))
    series = {}
    for at, calls in slots.items():
        ordered = sorted(duration for _, duration in calls)
        errors = sum(1 for status, _ in calls if status >= 500)
        series[at] = (len(calls), errors, tuple(percentile_cont(ordered, q) for q in QUANTILES))
    return series


def _route_stats(
    function: str,
    method: str,
    route: str,
    count: int,
    server: int,
    client: int,
    quantiles: Sequence[float | None],
) -> RouteStats:
    p50, p95, p99 = (round(float(q or 0.0), 3) for q in quantiles)
    return RouteStats(
        function=function,
        method=method,
        route=route,
        count=int(count),
        server_errors=int(server),
        client_errors=int(client),
        error_rate=_ratio(int(server), int(count)),
        p50_ms=p50,
        p95_ms=p95,
        p99_ms=p99,
    )


def _route_order(stats: RouteStats) -> tuple[int, str, str, str]:
    return (-stats.count, stats.function, stats.route, stats.method)


# -- tasks: SQL on both --------------------------------------------------------------------


def _task_stats(session: Session, start: datetime, end: datetime) -> list[TaskStats]:
    succeeded = func.sum(case((TaskMetric.status == "succeeded", 1), else_=0))
    failed = func.sum(case((TaskMetric.status == "failed", 1), else_=0))
    statement = (
        select(
            TaskMetric.agent_id,
            Agent.name,
            TaskMetric.model,
            func.count(),
            succeeded,
            failed,
            func.avg(cast(TaskMetric.run_ms, Float)),
            func.avg(cast(TaskMetric.queue_wait_ms, Float)),
            func.sum(TaskMetric.prompt_tokens),
            func.sum(TaskMetric.completion_tokens),
            func.sum(TaskMetric.cost_micros),
        )
        .outerjoin(Agent, Agent.id == TaskMetric.agent_id)
        .where(TaskMetric.created_at >= start, TaskMetric.created_at < end)
        .group_by(TaskMetric.agent_id, Agent.name, TaskMetric.model)
    )
    stats = []
    for (
        agent_id,
        name,
        model,
        count,
        ok,
        bad,
        run_ms,
        wait_ms,
        prompt,
        completion,
        cost,
    ) in session.execute(statement):
        stats.append(
            TaskStats(
                agent_id=agent_id if isinstance(agent_id, uuid.UUID) else uuid.UUID(str(agent_id)),
                agent_name=name,
                model=model,
                count=int(count),
                succeeded=int(ok),
                failed=int(bad),
                success_rate=_ratio(int(ok), int(count)),
                mean_run_ms=round(float(run_ms or 0.0), 3),
                mean_queue_wait_ms=round(float(wait_ms or 0.0), 3),
                prompt_tokens=int(prompt or 0),
                completion_tokens=int(completion or 0),
                total_tokens=int(prompt or 0) + int(completion or 0),
                cost_micros=int(cost or 0),
            )
        )
    return sorted(stats, key=lambda s: (-s.count, str(s.agent_id), s.model or ""))


def _task_series(
    session: Session, start: datetime, end: datetime, bucket: int
) -> dict[int, tuple[int, int, int]]:
    slot = epoch_bucket(TaskMetric.created_at, bucket, session.get_bind().dialect.name)
    statement = (
        select(slot, TaskMetric.status, func.count())
        .where(TaskMetric.created_at >= start, TaskMetric.created_at < end)
        .group_by(slot, TaskMetric.status)
    )
    slots: dict[int, list[int]] = defaultdict(lambda: [0, 0, 0])
    for at, status, count in session.execute(statement):
        slots[int(at)][{"succeeded": 0, "failed": 1}.get(status, 2)] += int(count)
    return {at: (ok, bad, other) for at, (ok, bad, other) in slots.items()}


# -- series --------------------------------------------------------------------------------


def _merge_series(
    start: datetime,
    end: datetime,
    bucket: int,
    api: dict[int, tuple[int, int, tuple[float | None, ...]]],
    tasks: dict[int, tuple[int, int, int]],
) -> list[SeriesPoint]:
    """One point per bucket from the one holding `start` to the one holding `end`, empty ones
    included (a chart's gap means "no traffic", not "no data")."""
    first = int(start.timestamp()) // bucket * bucket
    last = int(end.timestamp()) // bucket * bucket
    points = []
    for at in range(first, last + 1, bucket):
        count, errors, quantiles = api.get(at, (0, 0, (None, None, None)))
        ok, bad, other = tasks.get(at, (0, 0, 0))
        p50, p95, p99 = (None if q is None else round(float(q), 3) for q in quantiles)
        points.append(
            SeriesPoint(
                start=datetime.fromtimestamp(at, UTC),
                requests=count,
                server_errors=errors,
                p50_ms=p50,
                p95_ms=p95,
                p99_ms=p99,
                tasks_succeeded=ok,
                tasks_failed=bad,
                tasks_other=other,
            )
        )
    return points


def _ratio(part: int, whole: int) -> float:
    return round(part / whole, 6) if whole else 0.0
