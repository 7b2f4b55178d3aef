"""Migrations are safe for a deployed fleet: one line of history; every revision upgrades and
downgrades one step at a time on PostgreSQL — with rows in the tables, as in production — and
each downgrade restores exactly the schema of the revision before; the head revision builds
exactly the schema the models describe, on PostgreSQL and on SQLite.

(Cloud Build migrates before it deploys, so the running functions meet the new schema first.)
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import (
    JSON,
    Boolean,
    Engine,
    MetaData,
    bindparam,
    create_engine,
    func,
    insert,
    inspect,
    select,
    text,
)
from sqlalchemy import types as sqltypes
from sqlalchemy.pool import NullPool

from shared_layer.migrate import alembic_config, current_revision, downgrade, upgrade
from shared_layer.models import Base, UTCDateTime


def revisions() -> list[str]:
    """Base first."""
    script = ScriptDirectory.from_config(alembic_config())
    return [r.revision for r in reversed(list(script.walk_revisions()))]


@pytest.fixture
def fresh_pg(postgres_admin_url: str | None) -> Iterator[Engine]:
    if not postgres_admin_url:
        pytest.skip("PostgreSQL is not available here (see tests/conftest.py)")
    name = f"stratus_migrations_{uuid.uuid4().hex[:10]}"
    admin = create_engine(postgres_admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine = create_engine(postgres_admin_url.rsplit("/", 1)[0] + "/" + name, poolclass=NullPool)
    yield engine
    engine.dispose()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "postgresql":
        yield request.getfixturevalue("fresh_pg")
        return
    engine = create_engine(f"sqlite:///{tmp_path / 'fresh.db'}", poolclass=NullPool)
    yield engine
    engine.dispose()


def schema(engine: Engine) -> dict[str, Any]:
    """Everything a migration can change, as comparable values."""
    inspector = inspect(engine)
    tables = {}
    for table in sorted(set(inspector.get_table_names()) - {"alembic_version"}):
        tables[table] = {
            "columns": [
                (c["name"], str(c["type"]), c["nullable"], str(c.get("default")))
                for c in inspector.get_columns(table)
            ],
            "pk": inspector.get_pk_constraint(table)["constrained_columns"],
            "fks": sorted(
                (f["name"], tuple(f["constrained_columns"]), f["referred_table"])
                for f in inspector.get_foreign_keys(table)
            ),
            "indexes": sorted(
                (i["name"], tuple(i["column_names"]), bool(i["unique"]))
                for i in inspector.get_indexes(table)
            ),
            "unique": sorted(u["name"] or "" for u in inspector.get_unique_constraints(table)),
            "checks": sorted(c["name"] or "" for c in inspector.get_check_constraints(table)),
        }
    extra: dict[str, Any] = {}
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            extra["types"] = sorted(
                conn.execute(
                    text(
                        "SELECT typname FROM pg_type t JOIN pg_namespace n ON n.oid = "
                        "t.typnamespace WHERE n.nspname = 'public' AND t.typtype IN ('e', 'd')"
                    )
                ).scalars()
            )
            extra["sequences"] = sorted(
                conn.execute(
                    text("SELECT sequencename FROM pg_sequences WHERE schemaname = 'public'")
                ).scalars()
            )
    return {"tables": tables, **extra}


def _dummy(column: Any, checks: list[str]) -> Any:
    """A value the column accepts: the first literal a CHECK on it allows, else one of its type."""
    for check in checks:
        if column.name in check and (literal := re.search(r"'([^']*)'", check)):
            return literal[1]
    kind = column.type
    if isinstance(kind, sqltypes.Enum) and kind.enums:
        return kind.enums[0]
    if isinstance(kind, Boolean):
        return False
    if isinstance(kind, sqltypes.Integer | sqltypes.Numeric | sqltypes.Float):
        return 1
    if isinstance(kind, sqltypes.DateTime):
        return datetime.now(UTC)
    if isinstance(kind, sqltypes.Date):
        return datetime.now(UTC).date()
    if isinstance(kind, JSON | sqltypes.JSON):
        return {}
    if isinstance(kind, sqltypes.Uuid) or "UUID" in str(kind).upper():
        return uuid.uuid4()
    length = getattr(kind, "length", None) or 12
    return f"m{uuid.uuid4().hex}"[:length]


def fill_empty_tables(engine: Engine) -> None:
    """One row in every empty table, referencing rows of the tables it points at."""
    metadata = MetaData()
    metadata.reflect(engine)
    inspector = inspect(engine)
    with engine.begin() as conn:
        for table in metadata.sorted_tables:
            if table.name == "alembic_version":
                continue
            if conn.execute(select(func.count()).select_from(table)).scalar_one():
                continue
            checks = [str(c["sqltext"]) for c in inspector.get_check_constraints(table.name)]
            row: dict[str, Any] = {}
            for column in table.columns:
                fks = list(column.foreign_keys)
                optional = column.nullable or column.server_default is not None
                generated = column.primary_key and isinstance(column.type, sqltypes.Integer)
                if fks:
                    target = fks[0].column
                    row[column.name] = conn.execute(select(target).limit(1)).scalar_one()
                elif not (optional or generated):
                    row[column.name] = _dummy(column, checks)
            conn.execute(table.insert().values(**row))


def row_counts(engine: Engine) -> dict[str, int]:
    metadata = MetaData()
    metadata.reflect(engine)
    with engine.connect() as conn:
        return {
            t.name: conn.execute(select(func.count()).select_from(t)).scalar_one()
            for t in metadata.sorted_tables
            if t.name != "alembic_version"
        }


def test_the_history_is_one_line_from_base_to_a_single_head():
    script = ScriptDirectory.from_config(alembic_config())
    ordered = revisions()

    assert len(script.get_heads()) == 1
    assert len(script.get_bases()) == 1
    for previous, revision in zip([None, *ordered], ordered, strict=False):
        assert script.get_revision(revision).down_revision == previous


def test_each_migration_goes_up_and_down_one_step_at_a_time_with_rows(fresh):
    """On both backends: SQLite's batch-mode downgrades need proving too."""
    ordered = revisions()
    before: dict[str | None, dict[str, Any]] = {None: schema(fresh)}
    for revision in ordered:  # up, one step at a time, with a row in every table
        fill_empty_tables(fresh)
        upgrade(fresh, revision)
        assert current_revision(fresh) == revision
        before[revision] = schema(fresh)
    fill_empty_tables(fresh)
    kept = row_counts(fresh)

    for revision, previous in reversed(list(zip(ordered, [None, *ordered], strict=False))):
        downgrade(fresh, previous or "base")  # down, one step at a time, rows and all
        assert current_revision(fresh) == previous
        assert schema(fresh) == before[previous], f"downgrade of {revision} left a difference"

    assert before[None]["tables"] == {}
    assert inspect(fresh).get_table_names() == ["alembic_version"]
    upgrade(fresh)  # and up again from nothing
    assert schema(fresh) == before[ordered[-1]]
    assert set(kept) == set(row_counts(fresh))


def test_upgrading_keeps_the_rows_already_there(fresh_pg):
    first = revisions()[0]
    upgrade(fresh_pg, first)
    fill_empty_tables(fresh_pg)
    counts = row_counts(fresh_pg)

    upgrade(fresh_pg)

    after = row_counts(fresh_pg)
    assert {table: after[table] for table in counts} == counts


def test_the_head_revision_builds_exactly_the_schema_the_models_describe(fresh):
    upgrade(fresh)

    with fresh.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": True}
        )
        differences = compare_metadata(context, Base.metadata)

    assert differences == []
    assert set(inspect(fresh).get_table_names()) == {*Base.metadata.tables, "alembic_version"}


def test_0003_makes_each_refresh_token_family_a_session_and_marks_old_hashes_legacy(fresh):
    upgrade(fresh, "0002")
    user, now = uuid.uuid4(), datetime.now(UTC)
    live, reused = uuid.uuid4(), uuid.uuid4()
    native = fresh.dialect.name == "postgresql"  # SQLite keeps UUIDs as 32 hex digits

    def uid(value: uuid.UUID) -> object:
        return value if native else value.hex

    with fresh.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO users (id, email, password_hash, is_active, is_admin, created_at,"
                " updated_at) VALUES (:id, 'old@example.com', 'h', true, false, :now, :now)"
            ),
            {"id": uid(user), "now": now},
        )
        for family, revoked in [(live, [now, None]), (reused, [now, now])]:
            for i, revoked_at in enumerate(revoked):
                conn.execute(
                    text(
                        "INSERT INTO refresh_tokens (id, user_id, token_hash, family_id,"
                        " created_at, expires_at, revoked_at)"
                        " VALUES (:id, :user, :hash, :family, :created, :expires, :revoked)"
                    ),
                    {
                        "id": uid(uuid.uuid4()),
                        "user": uid(user),
                        "hash": uuid.uuid4().hex + uuid.uuid4().hex,
                        "family": uid(family),
                        "created": now + timedelta(minutes=i),
                        "expires": now + timedelta(days=30),
                        "revoked": revoked_at,
                    },
                )

    upgrade(fresh, "0003")

    with fresh.connect() as conn:
        sessions = {
            uuid.UUID(str(row.id)) if native else uuid.UUID(hex=row.id): row
            for row in conn.execute(text("SELECT * FROM auth_sessions"))
        }
        legacy = conn.execute(text("SELECT password_legacy FROM users")).scalar_one()
        families = set(
            conn.execute(text("SELECT DISTINCT session_id FROM refresh_tokens")).scalars()
        )
    assert set(sessions) == {live, reused}
    assert sessions[live].revoked_at is None
    assert sessions[reused].revoked_at is not None
    assert sessions[reused].revoked_reason == "refresh_reuse"
    assert len(families) == 2
    assert legacy in (True, 1)


def test_the_usage_ledger_starts_from_the_tasks_there_are_so_no_usage_resets(fresh):
    """0004 fills the ledger from the tasks: a `task` entry each and a `model` entry for each
    that stored tokens, at the task's creation, costed from its successful run's metric; every
    period then counts what it counted from the tasks before."""
    from shared_layer.models import Agent, Task, TaskMetric, User

    upgrade(fresh, "0003")
    now = datetime.now(UTC)
    user_id, agent_id = uuid.uuid4(), uuid.uuid4()
    tasks = [  # created, status, prompt and completion tokens, cost of its metric
        (now - timedelta(days=1), "succeeded", 300, 40, 123),
        (now - timedelta(days=2), "failed", 0, 0, None),
        (now - timedelta(days=45), "succeeded", 10, 5, None),  # no metric kept: cost 0
    ]
    with fresh.begin() as conn:
        conn.execute(insert(User.__table__).values(id=user_id, email="a@b.c", password_hash="x"))
        conn.execute(insert(Agent.__table__).values(id=agent_id, owner_id=user_id, name="a"))
        for created, status, prompt, completion, cost in tasks:
            task_id = uuid.uuid4()
            conn.execute(
                insert(Task.__table__).values(
                    id=task_id,
                    agent_id=agent_id,
                    owner_id=user_id,
                    status=status,
                    input="x",
                    model="gpt-4o-mini",
                    prompt_tokens=prompt,
                    completion_tokens=completion,
                    created_at=created,
                )
            )
            if cost is not None:
                metric = {"task_id": task_id, "agent_id": agent_id, "user_id": user_id}
                conn.execute(
                    insert(TaskMetric.__table__).values(
                        **metric,
                        status=status,
                        attempts=1,
                        queue_wait_ms=0,
                        run_ms=1,
                        cost_micros=cost,
                    )
                )
    since = {"since": now - timedelta(days=30)}
    tokens = "sum(prompt_tokens + completion_tokens)"

    def counted(sql: str) -> Any:  # a timestamp bound as the models store it
        return text(sql).bindparams(bindparam("since", type_=UTCDateTime()))

    with fresh.connect() as conn:
        query = f"SELECT count(*), {tokens} FROM tasks WHERE created_at >= :since"
        before = conn.execute(counted(query), since).one()
    upgrade(fresh, "0004")

    with fresh.connect() as conn:
        query = f"SELECT sum(tasks), {tokens} FROM usage_ledger WHERE created_at >= :since"
        after = conn.execute(counted(query), since).one()
        entries = conn.execute(
            text(
                "SELECT kind, tasks, prompt_tokens, completion_tokens, cost_micros, model"
                " FROM usage_ledger ORDER BY kind DESC, prompt_tokens DESC"
            )
        ).all()
    assert tuple(after) == tuple(before) == (2, 340)
    assert [tuple(e) for e in entries] == [
        ("task", 1, 0, 0, 0, None),
        ("task", 1, 0, 0, 0, None),
        ("task", 1, 0, 0, 0, None),
        ("model", 0, 300, 40, 123, "gpt-4o-mini"),
        ("model", 0, 10, 5, 0, "gpt-4o-mini"),
    ]
