"""Monitoring: one metric row per API call and per task run, and the seed's entry points.

    monitor_api_call(...)            decorator: time a call, record an `api_call_metrics` row
    monitor_task_execution(name)     decorator: time a task run, record a `task_metrics` row
    api_call_monitor(...)            the context manager both the decorator and `Router` use
    current_api_call() / current_task_run()   the observation the monitored code fills in
    get_performance_metrics(time_range_hours=24), get_health_status(), cleanup_old_metrics()

The `Router` (shared_layer/http.py) opens `api_call_monitor` around every request, so each HTTP
function is monitored once, by construction, with the route *template* (`/agents/{agent_id}`);
`run_task` (services/task_execution.py) carries `@monitor_task_execution`. API-call rows are
written in batches (shared_layer/metrics_buffer.py): a request adds at most one INSERT, and
usually none; a task run writes its row with one INSERT when it ends. A failure to record is
logged and swallowed: monitoring never fails the work it watches. `MONITORING_ENABLED=false`
turns recording off (bench/overhead.py measures the difference).
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from shared_layer.config import get_settings

if TYPE_CHECKING:
    from shared_layer.health import HealthReport
    from shared_layer.schemas.monitoring import CleanupReport, PerformanceReport

__all__ = [
    "ApiCall",
    "TaskRun",
    "api_call_monitor",
    "cleanup_old_metrics",
    "cost_micros",
    "current_api_call",
    "current_task_run",
    "flush_metrics",
    "get_health_status",
    "get_performance_metrics",
    "monitor_api_call",
    "monitor_task_execution",
    "task_run_monitor",
]

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

UNMATCHED_ROUTE = "(unmatched)"  # a path no route serves: never the raw path (unbounded labels)


@dataclass
class ApiCall:
    """What is known of one API call; the monitored code fills in what it learns."""

    function: str
    method: str
    route: str = UNMATCHED_ROUTE
    status_code: int = 500  # until a response says otherwise: an escaping exception is a 500
    user_id: uuid.UUID | None = None
    execution_id: str | None = None


@dataclass
class TaskRun:
    """One run of a task. Stays unrecorded unless `task_id` is set (a claimed run)."""

    name: str
    task_id: uuid.UUID | None = None
    agent_id: uuid.UUID | None = None
    user_id: uuid.UUID | None = None
    provider: str | None = None
    model: str | None = None
    status: str | None = None
    attempts: int = 0
    queue_wait_ms: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0


_api_call: ContextVar[ApiCall | None] = ContextVar("stratus_api_call", default=None)
_task_run: ContextVar[TaskRun | None] = ContextVar("stratus_task_run", default=None)


def current_api_call() -> ApiCall | None:
    return _api_call.get()


def current_task_run() -> TaskRun | None:
    return _task_run.get()


def _enabled() -> bool:
    try:
        return get_settings().monitoring_enabled
    except Exception:  # a refused configuration: health still answers, unmonitored
        return False


# -- API calls -----------------------------------------------------------------------------


@contextmanager
def api_call_monitor(
    function: str, method: str, *, execution_id: str | None = None
) -> Iterator[ApiCall]:
    """Time the block and record one `api_call_metrics` row when it ends (also on an error)."""
    call = ApiCall(function=function, method=method.upper(), execution_id=execution_id)
    token = _api_call.set(call)
    started = time.perf_counter()
    try:
        yield call
    finally:
        _api_call.reset(token)
        record_api_call(call, duration_ms=(time.perf_counter() - started) * 1000)


def monitor_api_call(
    endpoint: str | None = None,
    method: str | None = None,
    user_id: uuid.UUID | None = None,
    *,
    function: str | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """The seed's decorator, for an entry point that does not go through `Router` (which
    monitors every route itself). The status is read from the result when it has one."""

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            name = function or get_settings().function_name
            with api_call_monitor(name, method or "CALL") as call:
                call.route = endpoint or fn.__name__
                call.user_id = user_id
                result = fn(*args, **kwargs)
                call.status_code = _status_of(result)
                return result

        return wrapper

    return decorate


def _status_of(result: object) -> int:
    status = getattr(result, "status_code", None)
    if isinstance(status, int):
        return status
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], int):
        return result[1]
    return 200


def record_api_call(call: ApiCall, *, duration_ms: float) -> bool:
    """Queue the row for the next batch; False when monitoring is off or it failed (logged)."""
    if not _enabled():
        return False
    values = {
        "function": call.function[:64],
        "route": call.route[:200],
        "method": call.method[:10],
        "status_code": call.status_code,
        "duration_ms": round(duration_ms, 3),
        "user_id": call.user_id,
        "execution_id": call.execution_id[:100] if call.execution_id else None,
    }
    # Not models.utcnow: queueing a row must not import SQLAlchemy; only a flush writes.
    from shared_layer.metrics_buffer import api_calls

    try:
        api_calls.add({**values, "created_at": datetime.now(UTC)})
    except Exception:  # never fails the request (the write itself logs its own failures)
        logger.warning("could not queue the metric of %s %s", call.method, call.route)
        return False
    return True


def flush_metrics() -> int:
    """Write the API-call rows still waiting in this process (tests, shutdown, the CLI)."""
    from shared_layer.metrics_buffer import api_calls

    return api_calls.flush()


# -- task runs -----------------------------------------------------------------------------


@contextmanager
def task_run_monitor(name: str) -> Iterator[TaskRun]:
    run = TaskRun(name=name)
    token = _task_run.set(run)
    started = time.perf_counter()
    try:
        yield run
    except BaseException:
        run.status = run.status or "error"
        raise
    finally:
        _task_run.reset(token)
        record_task_run(run, run_ms=(time.perf_counter() - started) * 1000)


def monitor_task_execution(
    name: str, user_id: uuid.UUID | None = None
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """The seed's decorator: the wrapped run fills `current_task_run()` once it has claimed a
    task; a delivery that claims nothing (a duplicate, a finished task) records nothing."""

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            with task_run_monitor(name) as run:
                run.user_id = user_id
                result = fn(*args, **kwargs)
                if run.status is None and isinstance(result, str):
                    run.status = result
                return result

        return wrapper

    return decorate


def record_task_run(run: TaskRun, *, run_ms: float) -> bool:
    if run.task_id is None or run.agent_id is None or run.user_id is None:
        return False  # nothing was claimed: not a run
    if not _enabled():
        return False
    values = {
        "task_id": run.task_id,
        "agent_id": run.agent_id,
        "user_id": run.user_id,
        "provider": run.provider,
        "model": run.model,
        "status": (run.status or "unknown")[:16],
        "attempts": run.attempts,
        "queue_wait_ms": round(max(run.queue_wait_ms, 0.0), 3),
        "run_ms": round(run_ms, 3),
        "prompt_tokens": run.prompt_tokens,
        "completion_tokens": run.completion_tokens,
        "cost_micros": cost_micros(
            model=run.model,
            provider=run.provider,
            prompt_tokens=run.prompt_tokens,
            completion_tokens=run.completion_tokens,
        ),
    }
    return _insert_task_metric(values, what=f"task {run.task_id}")


def cost_micros(
    *, model: str | None, provider: str | None, prompt_tokens: int, completion_tokens: int
) -> int:
    """The cost in USD micros from the price table (`MODEL_PRICES`): the exact model name, else
    the longest listed prefix (`gpt-4o-mini-2024-07-18` → `gpt-4o-mini`); 0 when the provider
    is offline or the model is not listed. Rounded half up, so no run of real tokens is free."""
    if provider == "offline" or not model:
        return 0
    prices = get_settings().model_prices
    price = prices.get(model)
    if price is None:
        prefixes = [name for name in prices if model.startswith(name)]
        if not prefixes:
            return 0
        price = prices[max(prefixes, key=len)]
    total = prompt_tokens * price[0] + completion_tokens * price[1]  # micros per 1M tokens
    return (total + 500_000) // 1_000_000


# -- storage -------------------------------------------------------------------------------


def _insert_task_metric(values: dict[str, Any], *, what: str) -> bool:
    """One INSERT at the end of a run: a run makes several writes already, so no batching.
    Plain SQL, as for the API calls: no function reaches SQLAlchemy through monitoring."""
    from shared_layer.sql import transaction

    try:
        with transaction() as db:
            db.insert("task_metrics", {**values, "created_at": datetime.now(UTC)})
    except Exception as exc:  # monitoring must never fail the work it watches
        first = str(exc).splitlines()[0][:300] if str(exc) else ""
        logger.warning("could not record the metric of %s: %s: %s", what, type(exc).__name__, first)
        return False
    return True


# -- the seed's read-outs ------------------------------------------------------------------


def get_performance_metrics(time_range_hours: int = 24) -> PerformanceReport:
    """Per route and per agent/model statistics of the last `time_range_hours` hours."""
    from shared_layer.database import session_scope
    from shared_layer.metrics_query import performance_report, window_ending_now

    start, end = window_ending_now(hours=time_range_hours)
    with session_scope() as session:
        return performance_report(session, start=start, end=end)


def get_health_status() -> HealthReport:
    from shared_layer.health import check_health

    return check_health()


def cleanup_old_metrics() -> CleanupReport:
    """Delete metrics past their retention and reap lapsed task leases (what the scheduler runs)."""
    from shared_layer.maintenance import run_cleanup

    return run_cleanup()
