"""One run at a time across every instance: `exclusive_run(engine, name)`.

PostgreSQL: a session-level advisory lock (`pg_try_advisory_lock`) held by the connection the
block gets, so it is released when the block ends or, if the process dies, when the server
drops the connection. SQLite (one machine): an exclusive `flock` on a file beside the
database, released the same ways; an in-memory database has only this process, so a thread
lock. Nobody waits: a second run learns at once that it is not needed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import threading
from collections.abc import Iterator

from sqlalchemy import Connection, Engine, text
from sqlalchemy.engine import make_url

logger = logging.getLogger(__name__)

_memory_locks: dict[str, threading.Lock] = {}
_memory_guard = threading.Lock()


def advisory_key(name: str) -> int:
    """A stable signed 64-bit key for `name` (what `pg_try_advisory_lock(bigint)` takes)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


@contextlib.contextmanager
def exclusive_run(engine: Engine, name: str) -> Iterator[Connection | None]:
    """A connection while this process holds the lock `name`, or None if another holds it."""
    if engine.dialect.name == "postgresql":
        with _postgres_lock(engine, name) as connection:
            yield connection
        return
    with _sqlite_lock(engine, name) as held:
        if not held:
            yield None
            return
        with engine.connect() as connection:
            yield connection


@contextlib.contextmanager
def _postgres_lock(engine: Engine, name: str) -> Iterator[Connection | None]:
    key = advisory_key(name)
    connection = engine.connect()
    try:
        held = bool(
            connection.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar()
        )
        connection.commit()
        if not held:
            yield None
            return
        try:
            yield connection
        finally:
            _unlock(connection, key)
    finally:
        connection.close()


def _unlock(connection: Connection, key: int) -> None:
    try:
        connection.rollback()  # a failed batch may have left a transaction open
        connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        connection.commit()
    except Exception:  # never return a connection that may still hold the lock to the pool
        logger.warning("could not release advisory lock %s; dropping the connection", key)
        connection.invalidate()


@contextlib.contextmanager
def _sqlite_lock(engine: Engine, name: str) -> Iterator[bool]:
    database = make_url(str(engine.url)).database
    if not database or database == ":memory:":
        with _memory_guard:
            lock = _memory_locks.setdefault(name, threading.Lock())
        held = lock.acquire(blocking=False)
        try:
            yield held
        finally:
            if held:
                lock.release()
        return
    path = f"{database}.{name}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
