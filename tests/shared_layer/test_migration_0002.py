"""Migration 0002 (billing and email): it builds exactly the tables the models describe, and it
goes down to 0001 and up again, on SQLite and on PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, create_engine, inspect, text
from sqlalchemy.pool import NullPool

from shared_layer.migrate import current_revision, downgrade, upgrade
from shared_layer.models import Base

BILLING_TABLES = {
    "billing_customers",
    "subscriptions",
    "invoices",
    "stripe_events",
    "email_messages",
    "email_events",
    "email_suppressions",
}


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_engine(
    request: pytest.FixtureRequest, tmp_path: Path, postgres_admin_url: str | None
) -> Iterator[Engine]:
    """An engine on a new, empty database."""
    if request.param == "sqlite":
        engine = create_engine(f"sqlite:///{tmp_path / 'fresh.db'}", poolclass=NullPool)
        yield engine
        engine.dispose()
        return
    if not postgres_admin_url:
        pytest.skip("PostgreSQL is not available here (see tests/conftest.py)")
    name = f"stratus_mig_{uuid.uuid4().hex[:10]}"
    admin = create_engine(postgres_admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine = create_engine(postgres_admin_url.rsplit("/", 1)[0] + "/" + name, poolclass=NullPool)
    yield engine
    engine.dispose()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def test_the_migrations_build_exactly_the_schema_the_models_describe(fresh_engine):
    upgrade(fresh_engine)

    with fresh_engine.connect() as conn:
        differences = compare_metadata(
            MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata
        )

    assert differences == []
    assert set(inspect(fresh_engine).get_table_names()) >= BILLING_TABLES


def test_0002_goes_down_to_0001_and_up_again(fresh_engine):
    upgrade(fresh_engine, "0002")

    downgrade(fresh_engine, "0001")
    assert current_revision(fresh_engine) == "0001"
    assert not BILLING_TABLES & set(inspect(fresh_engine).get_table_names())

    upgrade(fresh_engine, "0002")
    assert set(inspect(fresh_engine).get_table_names()) >= BILLING_TABLES
