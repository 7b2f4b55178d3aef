"""Deleting metric rows older than their retention, in short transactions.

One `DELETE … WHERE created_at < cutoff` over millions of rows holds its row locks (and keeps
autovacuum and replication waiting) for as long as it runs. Here each batch is one
transaction over a range of `created_at`, walked in order through its index:

    upper := the created_at of the row `size` rows past `low`        (an index range scan)
    DELETE FROM t WHERE created_at >= :low AND created_at < :upper   (the same range)
    low := upper

Each batch reads only its own range: the index entries earlier batches left dead lie before
`low`, so batch *k* costs what batch 1 did (a `WHERE id IN (SELECT … LIMIT n)` loop rescans
them every time). The walk goes by time, not by id, so rows inserted out of order (a batch
of metrics written late, a backfill) are deleted like the others. The number of rows per
batch adapts so that a batch takes about `METRICS_CLEANUP_BATCH_SECONDS`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, Table, delete, func, select

logger = logging.getLogger(__name__)

MAX_GROWTH = 20  # a batch may grow to this many times the configured size


@dataclass
class DeleteResult:
    deleted: int = 0
    batches: int = 0
    longest_batch_ms: float = 0.0
    complete: bool = True


def delete_expired(
    connection: Connection,
    table: Table,
    *,
    cutoff: datetime,
    batch_size: int,
    batch_seconds: float,
    deadline: float,
) -> DeleteResult:
    """Delete `table`'s rows created before `cutoff`, committing batch by batch; stops (with
    `complete=False`) once `time.monotonic()` passes `deadline`."""
    created = table.c.created_at
    with connection.begin():
        low = connection.execute(select(func.min(created)).where(created < cutoff)).scalar()
    result = DeleteResult()
    size, smallest, largest = batch_size, max(batch_size // 10, 1), batch_size * MAX_GROWTH
    while low is not None:
        if time.monotonic() > deadline:
            result.complete = False
            break
        started = time.perf_counter()
        with connection.begin():
            upper = connection.execute(
                select(created)
                .where(created >= low, created < cutoff)
                .order_by(created)
                .offset(size)
                .limit(1)
            ).scalar()
            deleted = connection.execute(
                delete(table).where(created >= low, created < (upper or cutoff))
            ).rowcount
        elapsed = time.perf_counter() - started
        result.deleted += max(deleted, 0)
        result.batches += 1
        result.longest_batch_ms = max(result.longest_batch_ms, elapsed * 1000)
        # Aim the next batch at the target time from this one's rate, with a margin, never
        # more than doubling or less than halving at once.
        wanted = int(max(deleted, 1) / max(elapsed, 1e-4) * batch_seconds * 0.8)
        size = max(smallest, min(largest, size * 2, max(size // 2, wanted)))
        low = upper
    logger.info(
        "deleted %d rows from %s in %d batches",
        result.deleted,
        table.name,
        result.batches,
        extra={"table": table.name, "deleted": result.deleted, "batches": result.batches},
    )
    return result
