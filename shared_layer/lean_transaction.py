"""A transaction in two round trips on PostgreSQL, for a process that commits very often.

pg8000 spends round trips where a batch of webhook events cannot afford them: `BEGIN` is one,
each statement with parameters three, `COMMIT` three, and a pooled connection adds a ping on
checkout and two statements to reset its isolation level on return. `LeanTransactions` keeps
one connection of its own in autocommit mode and spends as few as the server allows:

- `BEGIN` goes in front of the transaction's first statement (one simple query), or on its
  own before a first statement that has parameters;
- writes `batch_rows.update_rows` makes are held back and sent with the `COMMIT`, in one
  simple query, when the block ends normally (so they are the transaction's last words: a
  read after them in the same block would not see them);
- on any exception the transaction is rolled back, and a connection that broke is dropped
  and replaced on next use;
- a connection idle for `ping_after_idle` seconds is checked (`SELECT 1`) before it is used,
  as the pool's pre-ping would (a connection the server or a proxy dropped while the instance
  was idle must not cost the first event after it), and one older than `recycle_after` is
  replaced, as the pool's recycle would.

The block gets the connection itself rather than a Session around it (a session built and
closed per batch is Python the batch does not need). A transaction whose statements are
`insert_new_and_lock` and `update_rows` costs two round trips, both simple queries sent on
pg8000's cursor. On SQLite it is `session_scope()`. Connections are kept for reuse, one per
transaction in flight (a group committer's batches in flight, whichever request thread leads
them), and follow the engine when settings rebuild it.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, event

from shared_layer.batch_rows import DEFERRED_WRITES, PENDING_PREFIX, Executor, simple_query
from shared_layer.database import get_engine, session_scope

__all__ = ["LeanTransactions"]


class LeanTransactions:
    """`with lean() as db:` one transaction on a connection of its own (see the module):
    on PostgreSQL `db` is that `Connection`, on SQLite a `session_scope()` session; the
    batch_rows functions and `record_stripe_events` take either. `close()` closes them all."""

    def __init__(self, *, ping_after_idle: float = 10.0, recycle_after: float = 1800.0) -> None:
        self._ping_after_idle = ping_after_idle
        self._recycle_after = recycle_after
        self._lock = threading.Lock()
        self._idle: list[_Held] = []  # connections no transaction is using, last used last
        self._open: list[Connection] = []

    @contextmanager
    def __call__(self) -> Iterator[Executor]:
        engine = get_engine()
        if engine.dialect.name != "postgresql":
            with session_scope() as session:
                yield session
            return
        held = self._checkout(engine)
        conn = held.conn
        info = conn.info  # the DBAPI connection's: read it while the connection is valid
        info[PENDING_PREFIX] = "BEGIN; "
        info[DEFERRED_WRITES] = []
        try:
            yield conn
            deferred = info[DEFERRED_WRITES]
            if deferred or PENDING_PREFIX not in info:  # (BEGIN goes in front if pending)
                simple_query(conn, "; ".join([*deferred, "COMMIT"]))
            if conn.in_transaction():  # SQLAlchemy's own, if it ran a statement: ended; with
                conn.rollback()  # the server's transaction committed, pg8000 sends nothing
        except BaseException:
            _abandon(conn)
            raise
        finally:
            # Gone, so that no other user of this DBAPI connection defers its writes.
            info.pop(DEFERRED_WRITES, None)
            info.pop(PENDING_PREFIX, None)
            held.used = time.monotonic()
            with self._lock:
                self._idle.append(held)

    def close(self) -> None:
        with self._lock:
            conns, self._open, self._idle = self._open, [], []
        for conn in conns:
            with suppress(Exception):  # an engine disposed under it: nothing left to free
                conn.close()

    def _checkout(self, engine: Engine) -> _Held:
        """An idle connection to `engine`, else a new one: one per transaction in flight (a
        group committer's batches in flight), whichever thread runs it. Replaced when the
        engine was rebuilt, the connection broke or grew old, or the process forked."""
        now = time.monotonic()
        pid = os.getpid()
        with self._lock:
            held = self._idle.pop() if self._idle else None
        if held is not None and (
            held.engine is not engine
            or held.conn.invalidated
            or held.pid != pid
            or now - held.opened > self._recycle_after
            or (now - held.used > self._ping_after_idle and not _alive(held.conn))
        ):
            if held.pid == pid:
                with suppress(Exception):
                    held.conn.close()
            held = None
        if held is None:
            conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            event.listen(conn, "before_cursor_execute", _begin_first, retval=True)
            held = _Held(conn, engine, pid, now, now)
            with self._lock:
                self._open = [c for c in self._open if not c.closed] + [conn]
        return held


@dataclass
class _Held:
    conn: Connection
    engine: Engine
    pid: int
    opened: float
    used: float


def _abandon(conn: Connection) -> None:
    """Roll back; a connection that cannot, or that the server closed (pg8000 reports the
    server's FATAL as an error first), is invalidated, to be replaced on next use."""
    try:
        dbapi_connection = conn.connection.dbapi_connection
        assert dbapi_connection is not None
        dbapi_connection.rollback()  # pg8000 sends ROLLBACK if the server's transaction is open
        if conn.in_transaction():
            conn.rollback()
    except Exception:
        with suppress(Exception):
            conn.invalidate()
        return
    _alive(conn)


def _alive(conn: Connection) -> bool:
    try:
        conn.exec_driver_sql("SELECT 1")
        conn.rollback()  # ends SQLAlchemy's transaction; in autocommit, nothing to send
    except Exception:
        with suppress(Exception):
            conn.invalidate()
        return False
    return True


def _begin_first(
    conn: Connection, cursor: Any, statement: str, parameters: Any, context: Any, many: bool
) -> tuple[str, Any]:
    """Open the transaction with the first statement SQLAlchemy sends (batch_rows sends its
    own through `simple_query`): in the same query when it has no parameters, else just
    before it."""
    prefix = conn.info.pop(PENDING_PREFIX, None)
    if prefix is None:
        return statement, parameters
    if not parameters:
        return prefix + statement, parameters
    cursor.execute(prefix)
    return statement, parameters
