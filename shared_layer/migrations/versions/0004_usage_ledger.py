"""usage ledger

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04 18:20:00.000000

The plan quotas count `usage_ledger` from now on instead of the tasks a user still has. So that
nobody's usage starts again from zero at deploy, the ledger is filled from the tasks there are:
a `task` entry per task, and a `model` entry per task that stored tokens, both at the task's
`created_at` (the time the quotas counted them by until now); the cost of that entry is the
cost its successful run's task metric recorded (0 where none is kept). Tokens of failed runs
were never stored, so there is nothing to carry over for them.

Tasks the previous release submits between this migration and its replacement's deploy are not
in the ledger (nor the tokens of runs it settles): the window of one deploy.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import shared_layer.models

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COLUMNS = (
    "id, user_id, task_id, agent_id, kind, tasks, prompt_tokens, completion_tokens,"
    " cost_micros, model, created_at"
)


def upgrade() -> None:
    op.create_table(
        "usage_ledger",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=True),
        sa.Column("task_id", sa.Uuid(), nullable=False),
        sa.Column("agent_id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("tasks", sa.Integer(), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("cost_micros", sa.BigInteger(), nullable=False),
        sa.Column("model", sa.String(length=100), nullable=True),
        sa.Column("created_at", shared_layer.models.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint("kind IN ('task', 'model')", name=op.f("ck_usage_ledger_kind")),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_usage_ledger_user_id_users"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_ledger")),
    )
    with op.batch_alter_table("usage_ledger", schema=None) as batch_op:
        batch_op.create_index(
            "ix_usage_ledger_user_id_created_at", ["user_id", "created_at"], unique=False
        )
    _backfill()


def _backfill() -> None:
    # A new id per row, stored as SQLAlchemy stores a Uuid: native on PostgreSQL, 32 hex
    # digits on SQLite.
    postgresql = op.get_bind().dialect.name == "postgresql"
    new_id = "gen_random_uuid()" if postgresql else "lower(hex(randomblob(16)))"
    op.execute(
        f"INSERT INTO usage_ledger ({_COLUMNS})"  # noqa: S608 - no input in it
        f" SELECT {new_id}, owner_id, id, agent_id, 'task', 1, 0, 0, 0, NULL, created_at"
        " FROM tasks"
    )
    op.execute(
        f"INSERT INTO usage_ledger ({_COLUMNS})"  # noqa: S608 - no input in it
        f" SELECT {new_id}, t.owner_id, t.id, t.agent_id, 'model', 0, t.prompt_tokens,"
        " t.completion_tokens, coalesce(m.cost_micros, 0), t.model, t.created_at"
        " FROM tasks t LEFT JOIN ("
        "   SELECT task_id, sum(cost_micros) AS cost_micros FROM task_metrics"
        "   WHERE status = 'succeeded' GROUP BY task_id"
        " ) m ON m.task_id = t.id"
        " WHERE t.prompt_tokens + t.completion_tokens > 0"
    )


def downgrade() -> None:
    with op.batch_alter_table("usage_ledger", schema=None) as batch_op:
        batch_op.drop_index("ix_usage_ledger_user_id_created_at")

    op.drop_table("usage_ledger")
