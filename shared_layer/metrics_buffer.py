"""API-call metric rows, written in batches: at most one INSERT per request, usually none.

A synchronous INSERT per request costs about as much as the request's own queries (a round
trip, a WAL flush, pg8000's statement parsing), so `MetricsBuffer` keeps rows in memory and
writes them with one multi-row INSERT when `MONITORING_BATCH_SIZE` rows are waiting or the
oldest has waited `MONITORING_FLUSH_SECONDS`. That write happens on the thread of the request
that found it due, while the request still holds the CPU (a serverless instance may get none
once it has answered). A timer flushes an idle instance's rows; the process's exit (Cloud Run
sends SIGTERM and allows ten seconds) flushes what is left. `MONITORING_BATCH_SIZE=1` writes
every row at once (the tests do). Every HTTP function writes these rows, so they go through
`shared_layer.sql`, never SQLAlchemy (whose import alone costs more than a bare cold start).

Rows belong to the settings they were recorded under: when the settings are rebuilt (a test
switching databases), rows recorded for the old database are dropped rather than written to
the new one.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from typing import Any

from shared_layer.config import Settings, get_settings
from shared_layer.sql import Db, json_literal, transaction

logger = logging.getLogger(__name__)


_COLUMNS = (
    "created_at",
    "function",
    "route",
    "method",
    "status_code",
    "duration_ms",
    "user_id",
    "execution_id",
)
# One statement without parameters whatever the batch size: the rows inline as one JSON
# literal, read back into the table's column types (pg8000 sends it in one round trip and never
# scans it; as parameters, eight arrays cost three round trips and encoding every element in
# Python).
_POSTGRES_INSERT = (
    f"INSERT INTO api_call_metrics ({', '.join(_COLUMNS)}) "  # noqa: S608 (names: constants)
    f"SELECT {', '.join(_COLUMNS)} "
    "FROM json_populate_recordset(NULL::api_call_metrics, CAST({rows} AS json))"
)


_SQLITE_INSERT = f"INSERT INTO api_call_metrics ({', '.join(_COLUMNS)}) VALUES"
_SQLITE_ROWS_PER_INSERT = 500  # 8 parameters a row, well under SQLite's limit of 32766


def _insert_rows(db: Db, batch: list[dict[str, Any]]) -> None:
    if db.dialect != "postgresql":  # SQLite: in-process, a multi-row VALUES list
        for start in range(0, len(batch), _SQLITE_ROWS_PER_INSERT):
            chunk = batch[start : start + _SQLITE_ROWS_PER_INSERT]
            params = {f"{name}_{i}": row[name] for i, row in enumerate(chunk) for name in _COLUMNS}
            rows = ", ".join(
                "(" + ", ".join(f":{name}_{i}" for name in _COLUMNS) + ")"
                for i in range(len(chunk))
            )
            db.execute(f"{_SQLITE_INSERT} {rows}", params)
        return
    db.execute(_POSTGRES_INSERT.format(rows=json_literal(batch)))


class MetricsBuffer:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows: list[dict[str, Any]] = []
        self._oldest = 0.0
        self._owner: Settings | None = None
        self._timer: threading.Timer | None = None
        self._atexit = False

    def add(self, row: dict[str, Any]) -> None:
        """Queue a row; write the batch now if it is due."""
        settings = get_settings()
        now = time.monotonic()
        with self._lock:
            if self._owner is not settings:
                if self._rows:
                    logger.debug("settings changed: %d unwritten metric rows dropped", len(self))
                self._rows, self._owner = [], settings
            if not self._rows:
                self._oldest = now
            self._rows.append(row)
            due = (
                len(self._rows) >= settings.monitoring_batch_size
                or now - self._oldest >= settings.monitoring_flush_seconds
            )
            batch = self._take() if due else []
            if not due:
                self._arm(settings.monitoring_flush_seconds)
        if batch:
            self._write(batch)

    def flush(self) -> int:
        """Write every waiting row now; the number written."""
        try:
            settings = get_settings()
        except Exception:  # refused settings (or none at exit): nowhere to write to
            return 0
        with self._lock:
            batch = self._take() if self._owner is settings else []
        return len(batch) if batch and self._write(batch) else 0

    def __len__(self) -> int:
        return len(self._rows)

    def _take(self) -> list[dict[str, Any]]:
        batch, self._rows = self._rows, []
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        return batch

    def _arm(self, seconds: float) -> None:
        """Start the idle-flush timer (and the exit hook) if none is pending; lock held."""
        if not self._atexit:
            atexit.register(self.flush)
            self._atexit = True
        if self._timer is None:
            self._timer = threading.Timer(seconds, self._on_timer)
            self._timer.daemon = True
            self._timer.name = "stratus-metrics-flush"
            self._timer.start()

    def _on_timer(self) -> None:
        with self._lock:
            self._timer = None
        try:
            self.flush()
        except Exception:  # the settings may be refused by now; never kill the timer thread loudly
            logger.debug("metrics flush from the timer failed", exc_info=True)

    @staticmethod
    def _write(batch: list[dict[str, Any]]) -> bool:
        try:
            with transaction() as db:
                _insert_rows(db, batch)
        except Exception as exc:  # monitoring must never fail the request it watches
            first = str(exc).splitlines()[0][:300] if str(exc) else ""
            logger.warning(
                "could not record %d API-call metric(s): %s: %s",
                len(batch),
                type(exc).__name__,
                first,
                extra={"metric_rows_lost": len(batch)},
            )
            return False
        return True


api_calls = MetricsBuffer()
