"""A batch's rows in few statements: insert-if-absent and lock, then write back by key.

`insert_new_and_lock` is `idempotency.insert_new` for many rows at once (`INSERT ... ON
CONFLICT (key) DO NOTHING RETURNING key`: a row another transaction is inserting is waited
for, then skipped, so each key is inserted by exactly one caller), followed by reading the
rows the batch will change under their row locks (`SELECT ... FOR UPDATE`). `update_rows`
writes the changed columns back by primary key. Rows go in key order and locks table by table
in the order given, so callers that keep one order wait on each other but never deadlock.

On PostgreSQL each call is one statement however many rows and tables it covers, sent with no
bind parameters: the rows travel inline as one escaped JSON literal read by
`json_populate_recordset`. That is what pg8000 makes cheap: a statement with parameters costs
three round trips (parse, describe, bind and execute) and a Python scan of its text, one
without costs one. They go straight to pg8000's cursor (`simple_query`), past SQLAlchemy's
statement and result bookkeeping. Each set of rows or keys read from a literal carries a
`LIMIT` of its length: the planner takes a set-returning function for 100 rows, and for that
many it reads a whole table rather than look each key up in its primary key, a cost that grows
with the table. On SQLite (one writer at a time, no locks to take) these are plain statements.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import Connection, Dialect, Table, bindparam, select, update
from sqlalchemy.orm import Session

from shared_layer.sql import JsonText, json_literal

__all__ = [
    "DEFERRED_WRITES",
    "PENDING_PREFIX",
    "Executor",
    "Lock",
    "Row",
    "connection_of",
    "insert_new_and_lock",
    "simple_query",
    "update_rows",
]

# A list under this key in Connection.info: update_rows appends its statement there instead
# of sending it, for the transaction to send with its COMMIT (lean_transaction).
DEFERRED_WRITES = "stratus.deferred_writes"
# A str under this key in Connection.info goes in front of the next statement sent, and is
# gone once sent (lean_transaction's `BEGIN; `).
PENDING_PREFIX = "stratus.pending_prefix"

Row = dict[str, Any]
Executor = Session | Connection  # what a transaction's statements run on: either will do
Lock = tuple[Table, Collection[str], tuple[str, ...]]  # table, string keys, columns to read


def connection_of(db: Executor) -> Connection:
    """The connection a session's transaction runs on (beginning it), or `db` itself."""
    return db if isinstance(db, Connection) else db.connection()


def insert_new_and_lock(
    db: Executor,
    table: Table,
    rows: Sequence[Mapping[str, Any]],
    *,
    key: str,
    locks: Sequence[Lock] = (),
) -> tuple[set[Any], list[dict[Any, Row]]]:
    """Insert the rows whose `key` is not stored yet (the first of repeated keys), then lock
    and read the stored rows each `Lock` names. A JSON column's value may be `JsonText`.

    The keys inserted, and per lock the rows found (by primary key; the lock's `columns`, the
    key among them). The rows of `table` all name the same columns.
    """
    unique: dict[Any, Mapping[str, Any]] = {}
    for row in rows:
        unique.setdefault(row[key], row)
    ordered = [dict(unique[k]) for k in sorted(unique)]
    sorted_locks = [(t, sorted(keys), columns) for t, keys, columns in locks]
    conn = connection_of(db)
    if conn.dialect.name == "postgresql":
        columns = tuple(ordered[0]) if ordered else (key,)
        shape = tuple((t, cols) for t, _, cols in sorted_locks)
        sql = _pg_insert_and_lock_sql(table, columns, key, shape, conn.dialect).format(
            rows=json_literal(ordered),
            rows_count=len(ordered),
            **{f"keys{n}": json_literal(k) for n, (_, k, _) in enumerate(sorted_locks)},
            **{f"keys{n}_count": len(k) for n, (_, k, _) in enumerate(sorted_locks)},
        )
        inserted: set[Any] = set()
        found: list[dict[Any, Row]] = [{} for _ in sorted_locks]
        for kind, row in simple_query(conn, sql):
            if kind < 0:
                inserted.add(row[key])
            else:
                t = sorted_locks[kind][0]
                found[kind][row[_primary_key(t)]] = _from_json(t, row)
        return inserted, found
    inserted = set()
    if ordered:
        statement = _sqlite_insert(table).on_conflict_do_nothing(index_elements=[key])
        values = [
            {k: v.parsed() if isinstance(v, JsonText) else v for k, v in r.items()} for r in ordered
        ]
        inserted = set(conn.execute(statement.returning(table.c[key]), values).scalars())
    found = []
    for t, keys, columns in sorted_locks:
        pk = t.c[_primary_key(t)]
        query = select(*(t.c[c] for c in columns)).where(pk.in_(keys)).order_by(pk)
        result = conn.execute(query.with_for_update()) if keys else None
        found.append({row[pk.name]: dict(row) for row in result.mappings()} if result else {})
    return inserted, found


def update_rows(db: Executor, writes: Sequence[tuple[Table, Sequence[Row]]]) -> None:
    """Set the columns each row names (the rows of one table name the same ones) on the
    stored row with its primary key: rows this transaction holds locked."""
    ordered = [(t, sorted(rows, key=lambda r: r[_primary_key(t)])) for t, rows in writes if rows]
    if not ordered:
        return
    conn = connection_of(db)
    if conn.dialect.name == "postgresql":
        shape = tuple((t, tuple(rows[0])) for t, rows in ordered)
        sql = _pg_update_sql(shape, conn.dialect).format(
            **{f"rows{n}": json_literal(rows) for n, (_, rows) in enumerate(ordered)},
            **{f"rows{n}_count": len(rows) for n, (_, rows) in enumerate(ordered)},
        )
        deferred = conn.info.get(DEFERRED_WRITES)
        if deferred is not None:
            deferred.append(sql)
        else:
            simple_query(conn, sql)
        return
    for t, rows in ordered:
        pk = _primary_key(t)
        statement = (
            update(t)
            .where(t.c[pk] == bindparam("b_" + pk))
            .values({name: bindparam("b_" + name) for name in rows[0] if name != pk})
        )
        conn.execute(statement, [{"b_" + name: value for name, value in r.items()} for r in rows])


def simple_query(conn: Connection, sql: str) -> list[tuple[Any, ...]]:
    """Send `sql` (PostgreSQL, no parameters) on the connection's pg8000 cursor as one simple
    query, after any `PENDING_PREFIX`; the rows of its last statement. In an ORM session's
    transaction pg8000 opens the transaction itself, as it does for SQLAlchemy."""
    prefix = conn.info.pop(PENDING_PREFIX, "")
    dbapi_connection = conn.connection.dbapi_connection
    assert dbapi_connection is not None  # a Connection in use holds one
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(prefix + sql)
        return list(cursor.fetchall()) if cursor.description else []
    finally:
        cursor.close()


def _primary_key(table: Table) -> str:
    (column,) = table.primary_key.columns
    return str(column.name)


def _sqlite_insert(table: Table) -> Any:
    from sqlalchemy.dialects.sqlite import insert

    return insert(table)


# PostgreSQL: one statement, the rows inline as JSON


def _from_json(table: Table, row: Mapping[str, Any]) -> Row:
    """A row read back through `row_to_json`, its timestamps as Python datetimes."""
    return {
        name: datetime.fromisoformat(value)
        if value is not None and _is_timestamp(table, name)
        else value
        for name, value in row.items()
    }


def _is_timestamp(table: Table, column: str) -> bool:
    try:
        return table.c[column].type.python_type is datetime
    except NotImplementedError:
        return False


def _records(table: Table, field: str, dialect: Dialect) -> str:
    """The rows of the `{field}` literal, `{field_count}` of them (see the module docstring)."""
    name = dialect.identifier_preparer.quote(table.name)
    return (
        f"(SELECT * FROM json_populate_recordset(NULL::{name}, CAST({{{field}}} AS json)) "  # noqa: S608
        f"LIMIT {{{field}_count}})"
    )


@lru_cache(maxsize=64)
def _pg_insert_and_lock_sql(
    table: Table,
    columns: tuple[str, ...],
    key: str,
    locks: tuple[tuple[Table, tuple[str, ...]], ...],
    dialect: Dialect,
) -> str:
    """The statement, with a `{rows}` and a `{keysN}` field per lock for the literals, and a
    `{rows_count}` and `{keysN_count}` for their lengths. Rows
    come back as (kind, row as JSON): kind -1 for an inserted key, else the lock's index.
    The insert's CTE is read first, so it runs first; each locking CTE sorts, then locks."""
    quote = dialect.identifier_preparer.quote
    names = ", ".join(quote(c) for c in columns)
    ctes = [
        f"new AS (INSERT INTO {quote(table.name)} ({names}) "  # noqa: S608 (names: metadata)
        f"SELECT {names} FROM {_records(table, 'rows', dialect)} AS r "
        f"ON CONFLICT ({quote(key)}) DO NOTHING RETURNING {quote(key)})"
    ]
    selects = [f"SELECT -1, json_build_object('{key}', {quote(key)}) FROM new"]  # noqa: S608
    for n, (t, cols) in enumerate(locks):
        pk = quote(_primary_key(t))
        ctes.append(
            f"lock{n} AS (SELECT {', '.join(quote(c) for c in cols)} FROM {quote(t.name)} "  # noqa: S608
            f"WHERE {pk} IN (SELECT json_array_elements_text(CAST({{keys{n}}} AS json)) "
            f"LIMIT {{keys{n}_count}}) "
            f"ORDER BY {pk} FOR UPDATE)"
        )
        selects.append(f"SELECT {n}, row_to_json(lock{n}) FROM lock{n}")  # noqa: S608
    return "WITH " + ", ".join(ctes) + " " + " UNION ALL ".join(selects)


@lru_cache(maxsize=64)
def _pg_update_sql(writes: tuple[tuple[Table, tuple[str, ...]], ...], dialect: Dialect) -> str:
    """The statement, with a `{rowsN}` and a `{rowsN_count}` field per table: the first
    tables' updates in CTEs."""
    quote = dialect.identifier_preparer.quote
    updates = []
    for n, (t, columns) in enumerate(writes):
        target, pk = quote(t.name), quote(_primary_key(t))
        sets = ", ".join(f"{quote(c)} = v.{quote(c)}" for c in columns if c != _primary_key(t))
        updates.append(
            f"UPDATE {target} SET {sets} FROM {_records(t, f'rows{n}', dialect)} AS v "  # noqa: S608
            f"WHERE {target}.{pk} = v.{pk}"
        )
    *first, last = updates
    ctes = ", ".join(f"w{n} AS ({u} RETURNING 1)" for n, u in enumerate(first))
    return (f"WITH {ctes} " if ctes else "") + last
