"""Insert-if-absent: the primitive every "store it once, keyed by the sender's id" path uses.

`INSERT ... ON CONFLICT (key) DO NOTHING RETURNING key` on PostgreSQL and SQLite alike. It is
what makes a webhook delivered twice at the same moment take effect once: on PostgreSQL the
second transaction waits on the first one's uncommitted row, then skips it (or inserts it, if
the first rolled back), so exactly one of them learns "inserted" — no read-then-write race, no
unique-violation exception that would abort the transaction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy.orm import DeclarativeBase

from shared_layer.batch_rows import Executor, connection_of

__all__ = ["insert_new"]


def insert_new(
    db: Executor,
    model: type[DeclarativeBase],
    rows: Sequence[Mapping[str, Any]],
    *,
    key: str,
) -> set[Any]:
    """Insert the rows whose `key` is not stored yet; the keys this call inserted.

    Rows repeating a key within `rows` are inserted once (the first wins). Rows go in key
    order, so two transactions inserting overlapping keys wait on each other in the same
    order and never deadlock.
    """
    unique: dict[Any, Mapping[str, Any]] = {}
    for row in rows:
        unique.setdefault(row[key], row)
    if not unique:
        return set()
    conn = connection_of(db)
    dialect = conn.dialect.name
    column = getattr(model, key)
    statement: Any
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        statement = pg_insert(model).on_conflict_do_nothing(index_elements=[key])
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        statement = sqlite_insert(model).on_conflict_do_nothing(index_elements=[key])
    else:  # pragma: no cover - the platform runs on these two
        raise NotImplementedError(f"insert_new does not support {dialect}")
    statement = statement.returning(column)
    result = conn.execute(statement, [dict(unique[k]) for k in sorted(unique)])
    return set(result.scalars().all())
