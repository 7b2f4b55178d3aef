"""Insert-if-absent and update-if-newer: what "store it once, keyed by the sender's id" and
"never move back to an older state" are built on.

`INSERT ... ON CONFLICT (key) DO NOTHING RETURNING key` on PostgreSQL and SQLite alike. It is
what makes a webhook delivered twice at the same moment take effect once: on PostgreSQL the
second transaction waits on the first one's uncommitted row, then skips it (or inserts it, if
the first rolled back), so exactly one of them learns "inserted" — no read-then-write race, no
unique-violation exception that would abort the transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, cast

from sqlalchemy import ColumnElement, Table, and_, not_
from sqlalchemy.orm import DeclarativeBase, Session

__all__ = ["insert_new", "upsert_newer"]


def _dialect_insert(session: Session, model: type[DeclarativeBase]) -> Any:
    """PostgreSQL's or SQLite's INSERT (both have ON CONFLICT ... and `excluded`)."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(model)
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(model)
    raise NotImplementedError(f"no ON CONFLICT support for {dialect}")  # pragma: no cover


def insert_new(
    session: Session,
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
    column = getattr(model, key)
    statement = _dialect_insert(session, model).on_conflict_do_nothing(index_elements=[key])
    statement = statement.returning(column)
    result = session.execute(statement, [dict(unique[k]) for k in sorted(unique)])
    return set(result.scalars().all())


def upsert_newer(
    session: Session,
    model: type[DeclarativeBase],
    values: Mapping[str, Any],
    *,
    key: str = "id",
    version: str = "version",
    keep: Collection[str] = (),
    computed: Mapping[str, Callable[[Any, Any], Any]] | None = None,
    unless: Callable[[Any, Any], ColumnElement[bool]] | None = None,
) -> bool:
    """Insert the row, or update the stored one when `values[version]` is not older than its
    own and `unless(stored, incoming)` does not hold; True when a row was written.

    One statement (`INSERT ... ON CONFLICT DO UPDATE ... WHERE`): the comparison and the write
    happen under the row's lock, so concurrent writers of the same row apply in turn and an
    older version arriving last changes nothing. `keep` names columns an update leaves as
    stored; `computed` gives columns an expression of (stored, incoming) columns.
    """
    table = cast(Table, model.__table__)
    statement = _dialect_insert(session, model).values(**values)
    incoming, stored = statement.excluded, table.c
    updates: dict[str, Any] = {
        name: incoming[name] for name in values if name != key and name not in keep
    }
    for name, build in (computed or {}).items():
        updates[name] = build(stored, incoming)
    condition: ColumnElement[bool] = stored[version] <= incoming[version]
    if unless is not None:
        condition = and_(condition, not_(unless(stored, incoming)))
    statement = statement.on_conflict_do_update(
        index_elements=[key], set_=updates, where=condition
    ).returning(stored[key])
    return session.execute(statement).first() is not None
