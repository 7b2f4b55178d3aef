"""The engine and the session scope, created on first use.

One engine per process (a Cloud Function instance), built from settings: a SQLite file by
default, PostgreSQL through pg8000 for `postgresql+pg8000://` URLs, and the Cloud SQL Python
Connector (with pg8000) when `CLOUD_SQL_INSTANCE` is set. The adapter owns the transaction:
`session_scope()` commits on success and rolls back on any exception; services only add/flush.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from shared_layer.config import get_settings
from shared_layer.dbapi import cloud_sql_connection, prepare_sqlite, send_without_delay

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_engine: Engine | None = None
_session_factory: sessionmaker[Session] | None = None


def _sqlite_engine(url: str, echo: bool) -> Engine:
    parsed = make_url(url)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, echo=echo, connect_args={"check_same_thread": False, "timeout": 30})

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        prepare_sqlite(dbapi_connection)

    return engine


def _cloud_sql_engine() -> Engine:
    """Cloud SQL through the Python Connector: no public IP, no proxy, IAM-checked TLS."""
    from google.cloud.sql.connector import Connector

    settings = get_settings()
    assert settings.cloud_sql_instance, "only called when CLOUD_SQL_INSTANCE is set"
    connector = Connector(refresh_strategy="lazy")

    def connect() -> Any:
        return cloud_sql_connection(connector, settings)  # the arguments health probes with too

    return create_engine(
        "postgresql+pg8000://",
        creator=connect,
        pool_size=settings.database_pool_size,
        max_overflow=0,
        pool_pre_ping=True,
        echo=settings.database_echo,
    )


def build_engine(url: str | None = None) -> Engine:
    """A new engine for `url`, or for the configured database."""
    settings = get_settings()
    if url is None and settings.cloud_sql_instance:
        return _cloud_sql_engine()
    url = url or settings.database_url
    if url.startswith("sqlite"):
        return _sqlite_engine(url, settings.database_echo)
    if url.startswith("postgresql://"):
        url = "postgresql+pg8000://" + url.removeprefix("postgresql://")
    engine = create_engine(
        url,
        pool_size=settings.database_pool_size,
        max_overflow=0,
        pool_pre_ping=True,
        pool_recycle=1800,
        echo=settings.database_echo,
    )
    if engine.dialect.driver == "pg8000":

        @event.listens_for(engine, "connect")
        def _no_delay(dbapi_connection: Any, _record: Any) -> None:
            send_without_delay(dbapi_connection)

    return engine


def get_engine() -> Engine:
    global _engine, _session_factory
    if _engine is None:
        with _lock:
            if _engine is None:
                _engine = build_engine()
                _session_factory = sessionmaker(_engine, expire_on_commit=False)
    return _engine


def reset_engine() -> None:
    """Dispose of the engine and the plain-SQL pool (tests, and after the settings change)."""
    global _engine, _session_factory
    from shared_layer.sql import reset_pool

    reset_pool()
    with _lock:
        if _engine is not None:
            _engine.dispose()
        _engine, _session_factory = None, None


@contextmanager
def session_scope() -> Iterator[Session]:
    """One transaction: commit when the block ends normally, roll back on any exception."""
    get_engine()
    assert _session_factory is not None
    session = _session_factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
