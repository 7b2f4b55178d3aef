"""Plain DBAPI connections to the configured database, without SQLAlchemy.

The health probe needs one connection, `SELECT 1` and one read; importing SQLAlchemy for that
would cost more than the rest of a health cold start. The connection goes where
`shared_layer.database` goes — the same `DATABASE_URL`, or the same Cloud SQL instance through
the same connector arguments (`cloud_sql_connection`, which the engine uses too) — so a database
the probe reaches is one the other functions reach. Supported, as in `shared_layer.database`:
SQLite (`sqlite3`) and PostgreSQL (`pg8000`).
"""

from __future__ import annotations

import re
import socket
import threading
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlsplit

if TYPE_CHECKING:
    from shared_layer.config import Settings

__all__ = [
    "backend_name",
    "cloud_sql_connection",
    "connect",
    "prepare_sqlite",
    "reset_cloud_sql_connector",
    "send_without_delay",
    "url_password",
]

# SQLAlchemy's URL shape: backend[+driver]://rest
_URL = re.compile(r"^(?P<backend>\w+)(?:\+(?P<driver>\w+))?://(?P<rest>.*)$", re.DOTALL)

_connector_lock = threading.Lock()
_connector: Any = None


def backend_name(url: str) -> str:
    """`sqlite`, `postgresql`, … from a SQLAlchemy URL; ValueError when it is not one."""
    match = _URL.match(url)
    if match is None:
        raise ValueError("the database URL is not of the form backend[+driver]://…")
    return match["backend"]


def url_password(url: str) -> str | None:
    """The password in a database URL (percent-decoded), for masking it in messages."""
    match = _URL.match(url)
    if match is None:
        return None
    try:
        password = urlsplit("//" + match["rest"]).password
    except ValueError:
        return None
    return unquote(password) if password else None


def connect(settings: Settings, *, timeout: float) -> Any:
    """A new DBAPI connection to the configured database; the caller closes it."""
    if settings.cloud_sql_instance:
        return cloud_sql_connection(_cloud_sql_connector(), settings)
    url = settings.database_url
    backend = backend_name(url)
    rest = url.partition("://")[2]
    if backend == "sqlite":
        return _sqlite(rest, timeout)
    if backend == "postgresql":
        return _postgresql(rest, timeout)
    raise ValueError(f"unsupported database backend {backend!r} (sqlite or postgresql)")


def send_without_delay(connection: Any) -> Any:
    """Turn Nagle's algorithm off on a pg8000 connection's socket, and return the connection.

    pg8000 leaves it on, so a message longer than one TCP segment (a statement over ~8 KB: a
    batch of webhook events, a metrics flush) waits for the server's delayed ACK before its
    last segment leaves: measured ~30 ms a statement on loopback instead of ~1.5 ms. pg8000
    has no option for it; its socket is `_usock` (a plain or TLS socket; Unix sockets have no
    Nagle and refuse the option)."""
    sock = getattr(connection, "_usock", None)
    if sock is not None:
        with suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return connection


def cloud_sql_connection(connector: Any, settings: Settings) -> Any:
    """A pg8000 connection to `CLOUD_SQL_INSTANCE` through a Cloud SQL Python Connector."""
    password = settings.db_password.get_secret_value() if settings.db_password else None
    return send_without_delay(
        connector.connect(
            settings.cloud_sql_instance,
            "pg8000",
            user=settings.db_user,
            password=password,
            db=settings.db_name,
            enable_iam_auth=settings.cloud_sql_iam_auth,
        )
    )


def _cloud_sql_connector() -> Any:
    """One connector per process: it keeps the instance's certificates between probes."""
    global _connector
    with _connector_lock:
        if _connector is None:
            from google.cloud.sql.connector import Connector

            _connector = Connector(refresh_strategy="lazy")
        return _connector


def reset_cloud_sql_connector() -> None:
    """Close and forget the probe's connector (tests, and a process whose settings changed)."""
    global _connector
    with _connector_lock:
        connector, _connector = _connector, None
    if connector is not None:
        connector.close()


def _sqlite(rest: str, timeout: float) -> Any:
    """`sqlite://` is in memory, `sqlite:///rel.db` relative, `sqlite:////abs.db` absolute;
    like the engine, a missing file (and its directory) is created."""
    import sqlite3

    path = rest.partition("?")[0].removeprefix("/") or ":memory:"
    if path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    return sqlite3.connect(path, timeout=timeout, check_same_thread=False)


def prepare_sqlite(connection: Any) -> None:
    """The pragmas every SQLite connection of the platform runs with, SQLAlchemy's or not.

    WAL lets readers run beside the writer; foreign keys are off by default in SQLite."""
    cursor = connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _postgresql(rest: str, timeout: float) -> Any:
    """pg8000 with the arguments SQLAlchemy's pg8000 dialect passes: user, password, host,
    port and database from the URL, its query parameters as keyword arguments."""
    import pg8000.dbapi

    parts = urlsplit("//" + rest)
    kwargs: dict[str, Any] = dict(parse_qsl(parts.query))
    kwargs["user"] = unquote(parts.username) if parts.username else None
    if parts.password:
        kwargs["password"] = unquote(parts.password)
    if parts.hostname:
        kwargs["host"] = parts.hostname
    if parts.port:
        kwargs["port"] = parts.port
    database = unquote(parts.path.removeprefix("/"))
    if database:
        kwargs["database"] = database
    kwargs["timeout"] = timeout
    return send_without_delay(pg8000.dbapi.connect(**kwargs))
