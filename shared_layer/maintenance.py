"""The scheduled run: `run_cleanup()` deletes expired metrics and throttle counters nobody has
touched for their memory, and reaps task leases, once.

What `metrics_cleanup` (Cloud Scheduler), `stratus cleanup` and the local stack's timer call.
The whole run holds `exclusive_run` (shared_layer/run_lock.py): a second run started while one
is going answers `skipped` at once, so nothing is deleted, reaped or republished twice. A run
stops at `METRICS_CLEANUP_MAX_SECONDS` (`partial`) and the next one goes on from there.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Literal, cast

from sqlalchemy import Table

from shared_layer.config import get_settings
from shared_layer.database import get_engine
from shared_layer.models import ApiCallMetric, TaskMetric, utcnow
from shared_layer.reaper import claim_stale_queued, reap_lapsed_leases, republish
from shared_layer.retention import DeleteResult, delete_expired
from shared_layer.run_lock import exclusive_run
from shared_layer.schemas.monitoring import CleanupReport
from shared_layer.throttle import delete_expired_counters

logger = logging.getLogger(__name__)

LOCK_NAME = "stratus.metrics_cleanup"
Status = Literal["done", "nothing_to_do", "partial", "skipped"]


def run_cleanup(*, now: datetime | None = None) -> CleanupReport:
    settings = get_settings()
    now = now or utcnow()
    started = time.monotonic()
    deadline = started + settings.metrics_cleanup_max_seconds
    retention = [
        (cast(Table, ApiCallMetric.__table__), settings.api_call_metrics_retention_days),
        (cast(Table, TaskMetric.__table__), settings.task_metrics_retention_days),
    ]
    with exclusive_run(get_engine(), LOCK_NAME) as connection:
        if connection is None:
            report = _report("skipped", {}, [], [], [], 0, started)
            report.message = "another cleanup run is in progress; this one did nothing"
            logger.info(report.message)
            return report
        deletions = [
            delete_expired(
                connection,
                table,
                cutoff=now - timedelta(days=days),
                batch_size=settings.metrics_cleanup_batch_size,
                batch_seconds=settings.metrics_cleanup_batch_seconds,
                deadline=deadline,
            )
            for table, days in retention
        ]
        forgotten = delete_expired_counters(now=now)
        reaped = reap_lapsed_leases(now=now)
        stale = claim_stale_queued(
            now=now, older_than=timedelta(seconds=settings.task_republish_after_seconds)
        )
        republished = republish([*reaped.requeued, *stale])
    deleted = {
        table.name: result.deleted for (table, _), result in zip(retention, deletions, strict=True)
    }
    deleted["throttle_counters"] = forgotten
    complete = all(d.complete for d in deletions)
    status: Status = "done" if complete else "partial"
    if complete and not any(deleted.values()) and not (reaped.requeued or reaped.failed or stale):
        status = "nothing_to_do"
    report = _report(
        status, deleted, deletions, reaped.requeued, reaped.failed, republished, started
    )
    logger.info(report.message, extra={"cleanup": report.model_dump(mode="json")})
    return report


def _report(
    status: Status,
    deleted: dict[str, int],
    deletions: list[DeleteResult],
    requeued: Sequence[object],
    failed: Sequence[object],
    republished: int,
    started: float,
) -> CleanupReport:
    if status == "nothing_to_do":
        message = "nothing to delete or reap: no metrics past their retention, no lapsed lease"
    else:
        per_table = ", ".join(f"{name} {count}" for name, count in deleted.items())
        message = (
            f"deleted {sum(deleted.values())} rows past their retention ({per_table}); "
            f"requeued {len(requeued)} and failed {len(failed)} tasks whose lease lapsed; "
            f"republished {republished}"
        )
        if status == "partial":
            message += "; stopped at METRICS_CLEANUP_MAX_SECONDS, the next run goes on"
    return CleanupReport(
        status=status,
        message=message,
        deleted=deleted,
        batches=sum(d.batches for d in deletions),
        longest_batch_ms=round(max((d.longest_batch_ms for d in deletions), default=0.0), 3),
        requeued=len(requeued),
        failed=len(failed),
        republished=republished,
        duration_ms=round((time.monotonic() - started) * 1000, 3),
    )
