"""sessions, throttle counters, legacy password hashes

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04 18:30:00.000000

A refresh token's rotation chain (`family_id`) becomes a session of its own (`auth_sessions`):
each existing chain is one, revoked when none of its tokens is left unrevoked (a reuse). Every
existing password hash is marked legacy: it was made from the password stripped of surrounding
whitespace and not normalised, so sign-in checks that form once more and rehashes.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import shared_layer.models

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "auth_sessions",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("created_at", shared_layer.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", shared_layer.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("user_agent", sa.String(length=400), nullable=True),
        sa.Column("ip_address", sa.String(length=45), nullable=True),
        sa.Column("revoked_at", shared_layer.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("revoked_reason", sa.String(length=32), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_auth_sessions_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_auth_sessions")),
    )
    with op.batch_alter_table("auth_sessions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_auth_sessions_user_id"), ["user_id"], unique=False)
    op.execute(
        "INSERT INTO auth_sessions (id, user_id, created_at, last_used_at, revoked_at,"
        " revoked_reason)"
        " SELECT family_id, user_id, min(created_at), max(created_at),"
        " CASE WHEN sum(CASE WHEN revoked_at IS NULL THEN 1 ELSE 0 END) = 0"
        " THEN max(revoked_at) END,"
        " CASE WHEN sum(CASE WHEN revoked_at IS NULL THEN 1 ELSE 0 END) = 0"
        " THEN 'refresh_reuse' END"
        " FROM refresh_tokens GROUP BY family_id, user_id"
    )
    with op.batch_alter_table("refresh_tokens", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_refresh_tokens_family_id"))
        batch_op.alter_column("family_id", new_column_name="session_id")
    with op.batch_alter_table("refresh_tokens", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_refresh_tokens_session_id"), ["session_id"], unique=False
        )
        batch_op.create_foreign_key(
            batch_op.f("fk_refresh_tokens_session_id_auth_sessions"),
            "auth_sessions",
            ["session_id"],
            ["id"],
            ondelete="CASCADE",
        )

    op.create_table(
        "throttle_counters",
        sa.Column("key", sa.String(length=100), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("blocked_until", shared_layer.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("expires_at", shared_layer.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_throttle_counters")),
    )
    with op.batch_alter_table("throttle_counters", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_throttle_counters_expires_at"), ["expires_at"], unique=False
        )

    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("password_legacy", sa.Boolean(), nullable=False, server_default=sa.true())
        )
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.alter_column("password_legacy", server_default=None)


def downgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("password_legacy")

    with op.batch_alter_table("throttle_counters", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_throttle_counters_expires_at"))
    op.drop_table("throttle_counters")

    with op.batch_alter_table("refresh_tokens", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("fk_refresh_tokens_session_id_auth_sessions"), type_="foreignkey"
        )
        batch_op.drop_index(batch_op.f("ix_refresh_tokens_session_id"))
        batch_op.alter_column("session_id", new_column_name="family_id")
    with op.batch_alter_table("refresh_tokens", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_refresh_tokens_family_id"), ["family_id"], unique=False
        )
    with op.batch_alter_table("auth_sessions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_auth_sessions_user_id"))
    op.drop_table("auth_sessions")
