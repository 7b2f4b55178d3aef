"""Plain SQL on pooled DBAPI connections: the request paths that cannot afford SQLAlchemy.

Importing SQLAlchemy costs more than a whole bare functions-framework cold start (about
170 ms of a 160 ms hello world on the reference machine), so the functions whose cold start
counts (auth, agents) read and write through this module instead: the same database
(`shared_layer.dbapi.connect`: the `DATABASE_URL`, or Cloud SQL through the same connector),
the same tables, written in SQL that runs on SQLite and PostgreSQL alike. The schema stays
where it is defined and migrated — `shared_layer.models` and Alembic — and values are stored
exactly as SQLAlchemy stores them (`bind`, `as_uuid`, `as_datetime`, `as_json`), so rows
written here and there are indistinguishable; tests/test_sql.py holds the two to that.

    with transaction() as db:
        row = db.one("SELECT id, email FROM users WHERE email = :email", {"email": email})

Parameters are named (`:name`) on both backends. A statement without parameters is sent as it
is: on PostgreSQL that is pg8000's one-round-trip simple query, which is why batches of rows
travel inline as one JSON literal (`json_literal`) rather than as parameters (three round trips
and a Python scan of the statement). `Db.of_session(session)` runs the same SQL inside an ORM
session's transaction, for code that already holds one (task_runner).
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal

from shared_layer.config import get_settings
from shared_layer.utils import holds_nul, locate

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

__all__ = [
    "Db",
    "Json",
    "JsonText",
    "Row",
    "UniqueViolation",
    "as_datetime",
    "as_json",
    "as_uuid",
    "driver_errors",
    "json_literal",
    "reset_pool",
    "transaction",
]

Dialect = Literal["sqlite", "postgresql"]
Row = dict[str, Any]

_NAMED = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")
# SQLAlchemy's SQLite storage format for DateTime (naive, UTC by the models' convention).
_SQLITE_DATETIME = "%Y-%m-%d %H:%M:%S.%f"
_IDLE_PING_SECONDS = 30.0  # a connection idle longer is checked before use (pool_pre_ping)
_RECYCLE_SECONDS = 1800.0  # and replaced after this long (pool_recycle)


class UniqueViolation(Exception):
    """An INSERT or UPDATE broke a unique constraint (the transaction is no longer usable)."""


class Json:
    """A value bound to a JSON column: text on SQLite, `json` on PostgreSQL."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


class JsonText:
    """Text already known to be one JSON value (a verified webhook body): `json_literal` puts
    it in as it is rather than encoding the parsed value again; `parsed()` where a driver
    needs the value."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        if "\x00" in text:  # valid JSON never holds a raw NUL; nor can a statement's text
            raise ValueError("JSON text with a NUL character")
        # Nor can json_populate_recordset read an escaped one, even inside a json column's
        # value; the quick search finds every candidate, the walk tells `\\u0000` apart.
        if "\\u0000" in text and (where := locate(json.loads(text), holds_nul)) is not None:
            raise ValueError(
                f"it holds a NUL (U+0000) at {where or 'its top'}, which PostgreSQL cannot store"
            )
        self.text = text

    def parsed(self) -> Any:
        return json.loads(self.text)


def as_uuid(value: Any) -> uuid.UUID:
    """A UUID column's value: pg8000 gives `UUID`, SQLite the 32-digit hex SQLAlchemy wrote."""
    return value if isinstance(value, uuid.UUID) else uuid.UUID(hex=value)


def as_datetime(value: Any) -> datetime:
    """A timestamp column's value, timezone-aware UTC (SQLite keeps naive UTC text)."""
    moment: datetime = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def as_json(value: Any) -> Any:
    """A JSON column's value: pg8000 parses it; SQLite returns the text."""
    return json.loads(value) if isinstance(value, str | bytes) else value


def json_literal(values: Sequence[Any]) -> str:
    """`values` as a PostgreSQL string literal of a JSON array, safe to put in a statement's
    text: the E'' string doubles each backslash and quote, so it means the same whatever
    `standard_conforming_strings` is. Datetimes (aware only) go as ISO 8601, UUIDs as text,
    `JsonText` fields of a row as they are: read back by `json_populate_recordset` into the
    columns' types."""
    text = "[" + ",".join(_json_row(value) for value in values) + "]"
    return "E'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


def _json_row(value: Any) -> str:
    if isinstance(value, Mapping) and (
        verbatim := {k: v.text for k, v in value.items() if isinstance(v, JsonText)}
    ):
        rest = {k: v for k, v in value.items() if k not in verbatim}
        fields = [_ENCODER.encode(rest)[1:-1]] if rest else []
        fields += [f"{_ENCODER.encode(k)}:{text}" for k, text in verbatim.items()]
        return "{" + ",".join(fields) + "}"
    return _ENCODER.encode(value)


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"cannot send a {type(value).__name__} as a column value")


# One encoder for every literal (json.dumps with options builds a new one per call).
_ENCODER = json.JSONEncoder(default=_json_value, separators=(",", ":"))


@lru_cache(maxsize=512)
def _to_format(sql: str) -> tuple[str, tuple[str, ...]]:
    """`:name` parameters as pg8000's `%s`, and the names in order (a literal `%` doubled)."""
    names: list[str] = []

    def placeholder(match: re.Match[str]) -> str:
        names.append(match.group(1))
        return "%s"

    return _NAMED.sub(placeholder, sql.replace("%", "%%")), tuple(names)


class Db:
    """One transaction on one DBAPI connection; the `transaction()` block commits or rolls back."""

    def __init__(self, connection: Any, dialect: Dialect) -> None:
        self.connection = connection
        self.dialect: Dialect = dialect

    @classmethod
    def of_session(cls, session: Session) -> Db:
        """The connection of an ORM session, inside the session's transaction."""
        connection = session.connection()
        name = connection.dialect.name
        driver = connection.connection.driver_connection
        if name == "sqlite":
            return cls(driver, "sqlite")
        if name == "postgresql":
            return cls(driver, "postgresql")
        raise ValueError(f"unsupported database backend {name!r}")  # pragma: no cover

    @property
    def for_update(self) -> str:
        """` FOR UPDATE` where row locks exist (SQLite locks the whole file on write)."""
        return " FOR UPDATE" if self.dialect == "postgresql" else ""

    @property
    def for_key_share(self) -> str:
        """` FOR KEY SHARE` where row locks exist: the lock a foreign-key check takes, which
        keeps the row from being deleted (not from being changed) until the transaction ends."""
        return " FOR KEY SHARE" if self.dialect == "postgresql" else ""

    def bind(self, value: Any) -> Any:
        """A Python value as SQLAlchemy would store it in this dialect."""
        if isinstance(value, uuid.UUID):
            return value if self.dialect == "postgresql" else value.hex
        if isinstance(value, datetime):
            if value.tzinfo is None:
                raise ValueError("naive datetime given to a UTC column")
            if self.dialect == "postgresql":
                return value.astimezone(UTC)
            return value.astimezone(UTC).strftime(_SQLITE_DATETIME)
        if isinstance(value, bool) and self.dialect == "sqlite":
            return int(value)
        if isinstance(value, Json):
            return None if value.value is None else json.dumps(value.value)
        return value

    def _run(self, sql: str, params: Mapping[str, Any] | None) -> Any:
        cursor = self.connection.cursor()
        values = {name: self.bind(value) for name, value in (params or {}).items()}
        try:
            if not values:  # as written: no placeholders to convert, no `%` to double
                cursor.execute(sql)
            elif self.dialect == "postgresql":
                statement, names = _to_format(sql)
                cursor.execute(statement, tuple(values[name] for name in names))
            else:
                cursor.execute(sql, values)
        except Exception as exc:
            if _is_unique_violation(exc):
                raise UniqueViolation(str(exc)) from exc
            raise
        return cursor

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> int:
        """Run a statement; the number of rows it changed."""
        cursor = self._run(sql, params)
        count: int = cursor.rowcount
        cursor.close()
        return count

    def all(self, sql: str, params: Mapping[str, Any] | None = None) -> list[Row]:
        cursor = self._run(sql, params)
        names = [column[0] for column in cursor.description or ()]
        rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        cursor.close()
        return rows

    def one(self, sql: str, params: Mapping[str, Any] | None = None) -> Row | None:
        """The first row, or None."""
        rows = self.all(sql, params)
        return rows[0] if rows else None

    def scalar(self, sql: str, params: Mapping[str, Any] | None = None) -> Any:
        """The first column of the first row, or None."""
        row = self.one(sql, params)
        return None if row is None else next(iter(row.values()))

    def insert(self, table: str, values: Mapping[str, Any]) -> None:
        """`INSERT INTO table (…) VALUES (…)` from a mapping of column to value."""
        columns = ", ".join(values)
        placeholders = ", ".join(f":{name}" for name in values)
        self.execute(f"INSERT INTO {table} ({columns}) VALUES ({placeholders})", values)  # noqa: S608 - names are ours


def _is_unique_violation(exc: Exception) -> bool:
    import sqlite3

    if isinstance(exc, sqlite3.IntegrityError):
        return "UNIQUE" in str(exc) or "PRIMARY KEY" in str(exc)
    fields = exc.args[0] if exc.args else None
    return isinstance(fields, dict) and fields.get("C") == "23505"


@lru_cache(maxsize=1)
def driver_errors() -> tuple[type[Exception], ...]:
    """The DBAPI drivers' base error classes (sqlite3's, pg8000's), for `except` clauses that
    must treat any database failure as transient: SQL run through `Db` raises these unwrapped."""
    import sqlite3

    errors: list[type[Exception]] = [sqlite3.Error]
    try:
        from pg8000.exceptions import Error as Pg8000Error
    except ImportError:  # pragma: no cover - a SQLite-only install
        pass
    else:
        errors.append(Pg8000Error)
    return tuple(errors)


class _Pool:
    """A few DBAPI connections reused across requests, like the engine's pool."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[tuple[Any, float, float]] = []  # connection, created, last used
        self.dialect: Dialect | None = None

    def _connect(self) -> Any:
        from shared_layer import dbapi

        settings = get_settings()
        connection = dbapi.connect(settings, timeout=30.0)
        if (
            not settings.cloud_sql_instance
            and dbapi.backend_name(settings.database_url) == "sqlite"
        ):
            dbapi.prepare_sqlite(connection)
            connection.isolation_level = None  # transactions are begun explicitly
            self.dialect = "sqlite"
        else:
            self.dialect = "postgresql"
        return connection

    def checkout(self) -> tuple[Any, float]:
        now = time.monotonic()
        while True:
            with self._lock:
                if not self._idle:
                    break
                connection, created, used = self._idle.pop()
            if now - created > _RECYCLE_SECONDS or (
                now - used > _IDLE_PING_SECONDS and not _alive(connection)
            ):
                _close(connection)
                continue
            return connection, created
        return self._connect(), now

    def checkin(self, connection: Any, created: float) -> None:
        with self._lock:
            if len(self._idle) < max(1, get_settings().database_pool_size):
                self._idle.append((connection, created, time.monotonic()))
                return
        _close(connection)

    def close_all(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for connection, _, _ in idle:
            _close(connection)


def _alive(connection: Any) -> bool:
    try:
        cursor = connection.cursor()
        cursor.execute("SELECT 1")
        cursor.fetchall()
        cursor.close()
        connection.rollback()
        return True
    except Exception:
        return False


def _close(connection: Any) -> None:
    with suppress(Exception):  # a broken connection is being thrown away anyway
        connection.close()


_pool = _Pool()


@contextmanager
def transaction() -> Iterator[Db]:
    """One transaction: commit when the block ends normally, roll back on any exception.

    On SQLite the transactions of this module run one at a time (the embedded default is a
    single-writer database); on PostgreSQL they run concurrently under its locks.

    A connection that failed mid-transaction is closed rather than returned to the pool."""
    connection, created = _pool.checkout()
    assert _pool.dialect is not None
    db = Db(connection, _pool.dialect)
    try:
        if db.dialect == "sqlite":
            # IMMEDIATE takes the write lock up front (waiting up to busy_timeout): a deferred
            # transaction that reads and then writes fails at once with SQLITE_BUSY when another
            # connection committed in between. WAL readers outside these blocks never wait.
            connection.execute("BEGIN IMMEDIATE")
        yield db
        connection.commit()
    except BaseException:
        try:
            connection.rollback()
        except Exception:
            _close(connection)
            raise
        _pool.checkin(connection, created)
        raise
    _pool.checkin(connection, created)


def reset_pool() -> None:
    """Close the pooled connections (tests, and after the settings change)."""
    _pool.close_all()
    _pool.dialect = None
