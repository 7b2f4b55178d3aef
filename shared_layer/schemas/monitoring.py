"""Bodies of the operations routes: `GET /health/metrics` and `POST /metrics_cleanup/`."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Literal

from pydantic import BaseModel, model_validator

from shared_layer.schemas.common import StrictQuery, UtcDatetime

Window = Literal["15m", "1h", "6h", "24h", "7d", "30d"]
WINDOWS: dict[str, timedelta] = {
    "15m": timedelta(minutes=15),
    "1h": timedelta(hours=1),
    "6h": timedelta(hours=6),
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
}


class MetricsQuery(StrictQuery):
    """`?window=24h` (the default), or `?start=…&end=…` (ISO 8601 with a zone, read in UTC; `end`
    defaults to now). The longest range, `METRICS_MAX_RANGE_DAYS`, is checked by the service."""

    window: Window | None = None
    start: UtcDatetime | None = None
    end: UtcDatetime | None = None

    @model_validator(mode="after")
    def _one_way_to_say_when(self) -> MetricsQuery:
        if self.window is not None and (self.start is not None or self.end is not None):
            raise ValueError("give either window or start/end, not both")
        if self.end is not None and self.start is None:
            raise ValueError("end needs a start")
        return self


class RouteStats(BaseModel):
    function: str
    method: str
    route: str
    count: int
    server_errors: int
    client_errors: int
    error_rate: float
    p50_ms: float
    p95_ms: float
    p99_ms: float


class TaskStats(BaseModel):
    agent_id: uuid.UUID
    agent_name: str | None
    model: str | None
    count: int
    succeeded: int
    failed: int
    success_rate: float
    mean_run_ms: float
    mean_queue_wait_ms: float
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost_micros: int


class SeriesPoint(BaseModel):
    start: datetime
    requests: int
    server_errors: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    tasks_succeeded: int
    tasks_failed: int
    tasks_other: int


class MetricsTotals(BaseModel):
    requests: int
    server_errors: int
    error_rate: float
    tasks: int
    tasks_succeeded: int
    cost_micros: int


class PerformanceReport(BaseModel):
    start: datetime
    end: datetime
    bucket_seconds: int
    computed_by: Literal["sql", "python"]
    totals: MetricsTotals
    routes: list[RouteStats]
    tasks: list[TaskStats]
    series: list[SeriesPoint]


class CleanupReport(BaseModel):
    status: Literal["done", "nothing_to_do", "partial", "skipped"]
    message: str
    deleted: dict[str, int]
    batches: int
    longest_batch_ms: float
    requeued: int
    failed: int
    republished: int
    duration_ms: float
