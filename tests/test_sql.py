"""shared_layer.sql: plain SQL that stores values exactly as the SQLAlchemy models do."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from shared_layer.models import Agent, TaskStep, User
from shared_layer.sql import (
    Db,
    Json,
    JsonText,
    UniqueViolation,
    as_datetime,
    as_json,
    as_uuid,
    json_literal,
    transaction,
)


def _user_row(**overrides: object) -> dict[str, object]:
    now = datetime.now(UTC)
    row: dict[str, object] = {
        "id": uuid.uuid4(),
        "email": f"{uuid.uuid4().hex[:8]}@example.com",
        "password_hash": "x" * 60,
        "full_name": None,
        "is_active": True,
        "is_admin": False,
        "password_legacy": False,
        "created_at": now,
        "updated_at": now,
    }
    row.update(overrides)
    return row


def test_a_row_written_in_sql_reads_back_through_the_orm(db: Engine) -> None:
    row = _user_row(full_name="Ada", email_verified_at=datetime(2026, 1, 2, 3, 4, 5, 6, UTC))
    with transaction() as sql:
        sql.insert("users", row)
    with Session(db) as session:
        user = session.get(User, row["id"])
        assert user is not None
        assert (user.email, user.full_name, user.is_active, user.is_admin) == (
            row["email"],
            "Ada",
            True,
            False,
        )
        assert user.email_verified_at == datetime(2026, 1, 2, 3, 4, 5, 6, UTC)
        assert user.created_at == row["created_at"]


def test_a_row_written_by_the_orm_reads_back_in_sql(db: Engine) -> None:
    with Session(db) as session, session.begin():
        user = User(email="orm@example.com", password_hash="h" * 60)
        session.add(user)
        session.flush()
        agent = Agent(owner_id=user.id, name="a", temperature=0.5)
        session.add(agent)
        session.flush()
        ids = (user.id, agent.id, user.created_at)
    with transaction() as sql:
        row = sql.one("SELECT * FROM users WHERE email = :email", {"email": "orm@example.com"})
        assert row is not None
        assert as_uuid(row["id"]) == ids[0]
        assert as_datetime(row["created_at"]) == ids[2]
        assert bool(row["is_active"]) is True
        found = sql.scalar(
            "SELECT temperature FROM agents WHERE id = :id AND owner_id = :owner",
            {"id": ids[1], "owner": ids[0]},
        )
        assert found == 0.5


def test_json_values_round_trip_both_ways(db: Engine) -> None:
    with Session(db) as session, session.begin():
        user = User(email="j@example.com", password_hash="h" * 60)
        session.add(user)
        session.flush()
        agent = Agent(owner_id=user.id, name="a")
        session.add(agent)
        session.flush()
        owner, agent_id = user.id, agent.id
    task_id = uuid.uuid4()
    now = datetime.now(UTC)
    content = {"text": "50% done", "items": [1, 2, {"nested": None}]}
    with transaction() as sql:
        sql.insert(
            "tasks",
            {
                "id": task_id,
                "agent_id": agent_id,
                "owner_id": owner,
                "status": "queued",
                "input": "hi",
                "prompt_tokens": 0,
                "completion_tokens": 0,
                "attempts": 0,
                "created_at": now,
                "updated_at": now,
            },
        )
        sql.insert(
            "task_steps",
            {
                "id": uuid.uuid4(),
                "task_id": task_id,
                "position": 0,
                "kind": "llm",
                "content": Json(content),
                "prompt_tokens": 1,
                "completion_tokens": 2,
                "duration_ms": 3.5,
                "created_at": now,
            },
        )
    with Session(db) as session:
        step = session.scalars(select(TaskStep).where(TaskStep.task_id == task_id)).one()
        assert step.content == content
    with transaction() as sql:
        stored = sql.scalar("SELECT content FROM task_steps WHERE task_id = :t", {"t": task_id})
        assert as_json(stored) == content


def test_a_unique_violation_is_one_exception_on_both_backends(db: Engine) -> None:
    row = _user_row()
    with transaction() as sql:
        sql.insert("users", row)
    with pytest.raises(UniqueViolation), transaction() as sql:
        sql.insert("users", _user_row(email=row["email"]))
    with transaction() as sql:
        count = sql.scalar("SELECT count(*) FROM users WHERE email = :e", {"e": row["email"]})
    assert count == 1


def test_an_exception_rolls_the_block_back_and_the_pool_stays_usable(db: Engine) -> None:
    row = _user_row()

    def fail_after_insert() -> None:
        with transaction() as sql:
            sql.insert("users", row)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        fail_after_insert()
    for _ in range(3):  # the connection went back to the pool clean
        with transaction() as sql:
            assert sql.scalar("SELECT count(*) FROM users WHERE id = :id", {"id": row["id"]}) == 0


def test_percent_signs_and_casts_are_not_parameters(db: Engine) -> None:
    with transaction() as sql:
        sql.insert("users", _user_row(email="pct@example.com", full_name="100%"))
        name = sql.scalar(
            "SELECT full_name FROM users WHERE full_name LIKE '%\\%' ESCAPE '\\' AND email = :e",
            {"e": "pct@example.com"},
        )
        assert name == "100%"
        if sql.dialect == "postgresql":
            assert sql.scalar("SELECT CAST(:n AS integer)::text AS t", {"n": 7}) == "7"


def test_rows_sent_inline_as_a_json_literal_read_back_unchanged(pg: Engine) -> None:
    """The statement's text carries the values: quotes, backslashes, a `%`, a `:name`, what
    looks like the literal's own end, and text beyond ASCII must all arrive as they were."""
    awkward = ["it's", "back\\slash \\' E'", "100% :name %s", "'; DROP TABLE users; --", "café ✓"]
    rows = [
        {"execution_id": text, "route": text, "user_id": uuid.uuid4(), "created_at": at}
        for text, at in zip(awkward, [datetime(2026, 1, 2, 3, 4, 5, 6, UTC)] * 5, strict=True)
    ]
    with transaction() as sql:
        back = sql.all(
            "SELECT execution_id, route, user_id, created_at FROM json_populate_recordset("
            f"NULL::api_call_metrics, CAST({json_literal(rows)} AS json))"
        )
    assert [
        (r["execution_id"], r["route"], as_uuid(r["user_id"]), as_datetime(r["created_at"]))
        for r in back
    ] == [(r["execution_id"], r["route"], r["user_id"], r["created_at"]) for r in rows]


def test_json_populate_recordset_cannot_read_an_escaped_nul_that_a_json_column_holds(
    pg: Engine,
) -> None:
    """Why `JsonText` refuses an escaped NUL (a Stripe event holding one is a 400): a json
    column holds it when inserted as a value, but json_populate_recordset, which the batch
    statements read their rows with, fails on one anywhere in its input (22P05)."""
    held = r'{"note": "a\u0000b"}'
    rows = f"""'[{{"id": "r", "payload": {held}}}]'"""
    with pg.connect() as conn:
        conn.exec_driver_sql("CREATE TEMP TABLE held (id text, payload json)")
        conn.exec_driver_sql(f"INSERT INTO held VALUES ('i', '{held}')")
        assert conn.exec_driver_sql("SELECT payload FROM held").scalar_one() == {"note": "a\x00b"}
        with pytest.raises(DBAPIError, match="22P05"):
            conn.exec_driver_sql(
                f"INSERT INTO held SELECT * FROM json_populate_recordset(NULL::held, {rows})"
            )
    with pytest.raises(ValueError, match=r"NUL .* at note"):
        JsonText(held)
    assert JsonText(r'{"note": "a\\u0000b"}').parsed() == {"note": "a\\u0000b"}


def test_of_session_runs_inside_the_sessions_transaction(db: Engine) -> None:
    row = _user_row()
    with Session(db) as session:
        session.begin()
        Db.of_session(session).insert("users", row)
        assert session.get(User, row["id"]) is not None  # same transaction sees it
        session.rollback()
    with transaction() as sql:
        assert sql.scalar("SELECT count(*) FROM users WHERE id = :id", {"id": row["id"]}) == 0


def test_naive_datetimes_are_refused() -> None:
    sql = Db(connection=None, dialect="sqlite")
    with pytest.raises(ValueError, match="naive"):
        sql.bind(datetime(2026, 1, 1))  # noqa: DTZ001 - the point
    assert sql.bind(datetime(2026, 1, 1, tzinfo=UTC) + timedelta(hours=1)) == (
        "2026-01-01 01:00:00.000000"
    )


def test_get_active_user_reads_the_record_and_refuses_a_disabled_one(db: Engine) -> None:
    from shared_layer.errors import Unauthorized
    from shared_layer.services.users import get_active_user

    active, disabled = _user_row(full_name="On"), _user_row(is_active=False)
    with transaction() as sql:
        sql.insert("users", active)
        sql.insert("users", disabled)
    with transaction() as sql:
        record = get_active_user(sql, user_id=active["id"])  # type: ignore[arg-type]
        assert (record.id, record.email, record.full_name) == (
            active["id"],
            active["email"],
            "On",
        )
        assert record.created_at == active["created_at"]
        assert not record.email_verified
        for missing in (disabled["id"], uuid.uuid4()):
            with pytest.raises(Unauthorized):
                get_active_user(sql, user_id=missing)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("record", "model"),
    [
        ("shared_layer.services.users:UserRecord", User),
        ("shared_layer.services.agents:AgentRecord", Agent),
        ("shared_layer.services.tasks:TaskRecord", "Task"),
        ("shared_layer.services.tasks:TaskStepRecord", TaskStep),
        ("shared_layer.services.billing:SubscriptionRecord", "Subscription"),
        ("shared_layer.services.usage_ledger:UsageEntryRecord", "UsageEntry"),
    ],
)
def test_each_record_mirrors_its_model(record: str, model: object) -> None:
    """The records the plain-SQL services return are the models' columns, no more, with the
    same nullability: a column added to or renamed in a model fails here until its record
    follows (the SQL itself is exercised by each service's tests)."""
    import dataclasses
    import importlib
    import typing

    from shared_layer import models

    module_name, _, class_name = record.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    table = (getattr(models, model) if isinstance(model, str) else model).__table__
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.name != "steps"}
    assert fields <= set(table.columns.keys()), fields - set(table.columns.keys())
    for name in fields:
        nullable_field = type(None) in typing.get_args(hints[name])
        assert nullable_field == table.columns[name].nullable, name
