"""The migration graph, read from shared_layer/migrations/versions/*.py without Alembic.

`health` reports whether the database is at this code's head revision. Alembic would find the
head by importing itself (and Mako) and executing every migration module (which imports
SQLAlchemy): more than the rest of a health cold start, for two strings. The head is a fact of
the files, so it is read from them: each migration's module-level `revision` and
`down_revision` literals (what Alembic's template writes, and what Alembic reads). A test holds
this reading equal to Alembic's `ScriptDirectory`.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

__all__ = ["VERSIONS", "MigrationGraph", "migration_graph", "read_migration_graph"]

VERSIONS = Path(__file__).with_name("migrations") / "versions"
_NAMES = ("revision", "down_revision")


@dataclass(frozen=True)
class MigrationGraph:
    revisions: frozenset[str]
    heads: tuple[str, ...]  # sorted; one on a straight line of history

    @property
    def head(self) -> str | None:
        """The head, or the heads joined by commas (as health reads several `alembic_version`
        rows); None when there are no migrations."""
        return ",".join(self.heads) or None


@lru_cache(maxsize=1)
def migration_graph() -> MigrationGraph:
    """This code's migrations, read once per process (they do not change under it)."""
    return read_migration_graph(VERSIONS)


def read_migration_graph(directory: Path) -> MigrationGraph:
    """Every revision in `directory` and the heads (revisions no other revision follows).

    Like Alembic, a file without a `revision` (`__init__.py`) is not a migration; a value that
    is not a literal is a ValueError.
    """
    parents: dict[str, tuple[str, ...]] = {}
    for path in sorted(directory.glob("*.py")):
        values = _revision_literals(path.read_text(encoding="utf-8"), path)
        revision = values.get("revision")
        if revision is None:
            continue
        if not isinstance(revision, str):
            raise ValueError(f"{path.name}: `revision` is not a string")
        parents[revision] = _as_tuple(values.get("down_revision"), path)
    followed = {parent for down in parents.values() for parent in down}
    heads = tuple(sorted(set(parents) - followed))
    return MigrationGraph(revisions=frozenset(parents), heads=heads)


def _revision_literals(source: str, path: Path) -> dict[str, object]:
    """The module-level `revision` / `down_revision` values. Alembic's template writes them
    before the first function, so only that prefix is parsed (a migration's body can be long);
    the whole file when they are not found there."""
    cut = source.find("\ndef ")
    for text in (source[:cut], source) if cut >= 0 else (source,):
        try:
            found = _assignments(ast.parse(text, filename=str(path)).body, path)
        except SyntaxError:
            continue
        if "revision" in found:
            return found
    return {}


def _assignments(statements: Iterable[ast.stmt], path: Path) -> dict[str, object]:
    found: dict[str, object] = {}
    for statement in statements:
        if isinstance(statement, ast.Assign):
            targets, value = statement.targets, statement.value
        elif isinstance(statement, ast.AnnAssign) and statement.value is not None:
            targets, value = [statement.target], statement.value
        else:
            continue
        for target in targets:
            if isinstance(target, ast.Name) and target.id in _NAMES:
                try:
                    found[target.id] = ast.literal_eval(value)
                except ValueError:
                    raise ValueError(f"{path.name}: `{target.id}` is not a literal") from None
    return found


def _as_tuple(down: object, path: Path) -> tuple[str, ...]:
    if down is None:
        return ()
    if isinstance(down, str):
        return (down,)
    if isinstance(down, tuple | list) and all(isinstance(d, str) for d in down):
        return tuple(down)
    raise ValueError(f"{path.name}: `down_revision` is not a revision, a sequence of them or None")
