"""The migration graph read from the files (for health) is the graph Alembic reads."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.script import ScriptDirectory

from shared_layer.migrate import alembic_config, head_revision
from shared_layer.migration_files import VERSIONS, migration_graph, read_migration_graph


def _alembic(directory: Path) -> ScriptDirectory:
    """Alembic's own reading of a script directory whose migrations are in `versions/`."""
    return ScriptDirectory(str(directory))


def _write(directory: Path, name: str, text: str) -> None:
    versions = directory / "versions"
    versions.mkdir(parents=True, exist_ok=True)
    (versions / name).write_text(text)


def _migration(revision: str, down: str, *, annotated: bool = True) -> str:
    """A migration as Alembic's template writes it (annotated) or as older templates did."""
    if annotated:
        header = f"revision: str = {revision!r}\ndown_revision: str | None = {down}\n"
    else:
        header = f"revision = {revision!r}\ndown_revision = {down}\n"
    return (
        f'"""{revision}\n\nRevision ID: {revision}\n"""\n\nimport sqlalchemy as sa\n\n'
        f"{header}branch_labels = None\ndepends_on = None\n\n\n"
        "def upgrade() -> None:\n    pass\n\n\ndef downgrade() -> None:\n    pass\n"
    )


def test_the_projects_head_and_revisions_are_alembics():
    script = ScriptDirectory.from_config(alembic_config())
    graph = migration_graph()

    assert graph.head == script.get_current_head() == head_revision()
    assert graph.heads == tuple(sorted(script.get_heads()))
    assert graph.revisions == {rev.revision for rev in script.walk_revisions()}
    assert Path(script.versions) == VERSIONS


def test_a_branch_and_its_merge_read_as_alembic_reads_them(tmp_path):
    _write(tmp_path, "a_base.py", _migration("aaa", "None"))
    _write(tmp_path, "b_left.py", _migration("bbb", "'aaa'", annotated=False))
    _write(tmp_path, "c_right.py", _migration("ccc", "'aaa'"))
    _write(tmp_path, "__init__.py", "")
    branched = read_migration_graph(tmp_path / "versions")

    assert branched.heads == ("bbb", "ccc") == tuple(sorted(_alembic(tmp_path).get_heads()))
    assert branched.head == "bbb,ccc"  # as health reads two alembic_version rows

    _write(tmp_path, "d_merge.py", _migration("ddd", "('bbb', 'ccc')"))
    merged = read_migration_graph(tmp_path / "versions")

    assert merged.heads == ("ddd",) == tuple(_alembic(tmp_path).get_heads())
    assert merged.revisions == {"aaa", "bbb", "ccc", "ddd"}


def test_identifiers_written_after_the_functions_are_still_found(tmp_path):
    body = (
        "import os\n\n\ndef upgrade() -> None:\n    pass\n\n\n"
        "revision = 'late'\ndown_revision = None\n"
    )
    _write(tmp_path, "late.py", body)

    found = read_migration_graph(tmp_path / "versions")

    assert found.head == "late" == _alembic(tmp_path).get_current_head()


def test_a_directory_without_migrations_has_no_head(tmp_path):
    _write(tmp_path, "__init__.py", "")

    assert read_migration_graph(tmp_path / "versions").head is None


def test_a_revision_that_is_not_a_literal_is_refused(tmp_path):
    _write(tmp_path, "computed.py", "import os\nrevision = os.environ['REV']\n")

    with pytest.raises(ValueError, match=r"computed\.py: `revision` is not a literal"):
        read_migration_graph(tmp_path / "versions")
