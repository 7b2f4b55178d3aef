"""The platform's tables, as typed SQLAlchemy 2.x models.

The schema is built by the Alembic migrations in `shared_layer/migrations`, never by
`create_all`; a test checks that autogenerate finds no difference between the two.
Times are stored timezone-aware (UTC) on both PostgreSQL and SQLite.
"""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    Uuid,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC, also on SQLite (which drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


BigIntId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON, uuid.UUID: Uuid}


class TimestampMixin:
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class User(TimestampMixin, Base):
    __tablename__ = "users"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str] = mapped_column(String(100))
    full_name: Mapped[str | None] = mapped_column(String(200))
    is_active: Mapped[bool] = mapped_column(default=True)
    is_admin: Mapped[bool] = mapped_column(default=False)
    email_verified_at: Mapped[datetime | None]
    # The hash was made, before passwords were normalised (NFKC), from the password with its
    # surrounding whitespace stripped: the next sign-in checks that form too, then rehashes.
    password_legacy: Mapped[bool] = mapped_column(default=False)

    @property
    def email_verified(self) -> bool:
        return self.email_verified_at is not None


class AuthSession(Base):
    """One sign-in: its access tokens carry its id (`sid`) and its refresh tokens rotate within
    it. Revoking it (logout, a reused refresh token) ends both."""

    __tablename__ = "auth_sessions"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime] = mapped_column(default=utcnow)
    user_agent: Mapped[str | None] = mapped_column(String(400))
    ip_address: Mapped[str | None] = mapped_column(String(45))
    revoked_at: Mapped[datetime | None]
    revoked_reason: Mapped[str | None] = mapped_column(String(32))  # logout | refresh_reuse


class RefreshToken(Base):
    """An opaque refresh token, stored as its SHA-256; rotated on every use within its session."""

    __tablename__ = "refresh_tokens"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    session_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("auth_sessions.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]


class ThrottleCounter(Base):
    """Attempts counted against one throttled key (`shared_layer.throttle`), when Redis is not
    configured. The key names the limit and a digest of its subject (an address, an IP), never
    the subject itself; a row past `expires_at` is forgotten and deleted by the cleanup job."""

    __tablename__ = "throttle_counters"

    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    attempts: Mapped[int]
    blocked_until: Mapped[datetime | None]
    expires_at: Mapped[datetime] = mapped_column(index=True)


class AgentSystem(enum.StrEnum):
    SIMPLE = "simple"
    ENHANCED = "enhanced"


class Agent(TimestampMixin, Base):
    """An agent's own settings; a NULL column means "use the environment default"."""

    __tablename__ = "agents"
    __table_args__ = (
        UniqueConstraint("owner_id", "name", name="uq_agents_owner_id_name"),
        CheckConstraint(
            "temperature IS NULL OR (temperature >= 0 AND temperature <= 2)", name="temperature"
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    owner_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(100))
    description: Mapped[str | None] = mapped_column(Text)
    system: Mapped[str | None] = mapped_column(String(16))
    model: Mapped[str | None] = mapped_column(String(100))
    system_prompt: Mapped[str | None] = mapped_column(Text)
    temperature: Mapped[float | None] = mapped_column(Float)
    max_tokens: Mapped[int | None]
    timeout_seconds: Mapped[int | None]


class TaskStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def is_final(self) -> bool:
        return self in (TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELED)


class Task(Base):
    __tablename__ = "tasks"
    __table_args__ = (
        Index("ix_tasks_owner_id_created_at", "owner_id", "created_at"),
        Index("ix_tasks_status_lease_expires_at", "status", "lease_expires_at"),
        CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed', 'canceled')", name="status"
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    agent_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("agents.id", ondelete="CASCADE"), index=True
    )
    owner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16), default=TaskStatus.QUEUED.value)
    input: Mapped[str] = mapped_column(Text)
    result: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    provider: Mapped[str | None] = mapped_column(String(32))
    model: Mapped[str | None] = mapped_column(String(100))
    prompt_tokens: Mapped[int] = mapped_column(default=0)
    completion_tokens: Mapped[int] = mapped_column(default=0)
    attempts: Mapped[int] = mapped_column(default=0)
    lease_expires_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    steps: Mapped[list[TaskStep]] = relationship(
        order_by="TaskStep.position", cascade="all, delete-orphan", lazy="raise"
    )

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class TaskStep(Base):
    """One thing the agent did while running a task (a model call, a tool call)."""

    __tablename__ = "task_steps"
    __table_args__ = (
        UniqueConstraint("task_id", "position", name="uq_task_steps_task_id_position"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    task_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"))
    position: Mapped[int]
    kind: Mapped[str] = mapped_column(String(32))
    content: Mapped[dict[str, Any]]
    prompt_tokens: Mapped[int] = mapped_column(default=0)
    completion_tokens: Mapped[int] = mapped_column(default=0)
    duration_ms: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiCallMetric(Base):
    __tablename__ = "api_call_metrics"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    function: Mapped[str] = mapped_column(String(64))
    route: Mapped[str] = mapped_column(String(200))
    method: Mapped[str] = mapped_column(String(10))
    status_code: Mapped[int]
    duration_ms: Mapped[float] = mapped_column(Float)
    user_id: Mapped[uuid.UUID | None]
    execution_id: Mapped[str | None] = mapped_column(String(100))


class TaskMetric(Base):
    __tablename__ = "task_metrics"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    task_id: Mapped[uuid.UUID]
    agent_id: Mapped[uuid.UUID]
    user_id: Mapped[uuid.UUID]
    provider: Mapped[str | None] = mapped_column(String(32))
    model: Mapped[str | None] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int]
    queue_wait_ms: Mapped[float] = mapped_column(Float)
    run_ms: Mapped[float] = mapped_column(Float)
    prompt_tokens: Mapped[int] = mapped_column(default=0)
    completion_tokens: Mapped[int] = mapped_column(default=0)
    cost_micros: Mapped[int] = mapped_column(BigInteger, default=0)


class UsageEntry(Base):
    """One line of the usage ledger, which the plan quotas count (services/usage_ledger.py):
    `task` for a task submitted (tasks = 1), `model` for the tokens a run's model calls spent.

    Insert-only: nothing updates or deletes an entry, and `task_id` / `agent_id` are plain
    columns, not foreign keys, so deleting a task or an agent takes nothing of its usage with
    it. `user_id` becomes NULL if the user is deleted: the usage stays on the books.
    """

    __tablename__ = "usage_ledger"
    __table_args__ = (
        Index("ix_usage_ledger_user_id_created_at", "user_id", "created_at"),
        CheckConstraint("kind IN ('task', 'model')", name="kind"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    task_id: Mapped[uuid.UUID]
    agent_id: Mapped[uuid.UUID]
    kind: Mapped[str] = mapped_column(String(16))
    tasks: Mapped[int] = mapped_column(default=0)
    prompt_tokens: Mapped[int] = mapped_column(default=0)
    completion_tokens: Mapped[int] = mapped_column(default=0)
    cost_micros: Mapped[int] = mapped_column(BigInteger, default=0)  # USD, from MODEL_PRICES
    model: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


# Billing (Stripe) and email (SendGrid).


class BillingCustomer(Base):
    """The Stripe customer of a user: created once, on the first checkout, and reused."""

    __tablename__ = "billing_customers"

    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    stripe_customer_id: Mapped[str] = mapped_column(String(255), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Subscription(Base):
    """A Stripe subscription as the newest event applied left it.

    `version` is the `created` time (Unix seconds) of that event: an older event arriving
    late never moves the row back.
    """

    __tablename__ = "subscriptions"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)  # sub_...
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    stripe_customer_id: Mapped[str] = mapped_column(String(255))
    plan: Mapped[str | None] = mapped_column(String(32))  # None: a price no plan names
    price_id: Mapped[str | None] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(32))
    current_period_start: Mapped[datetime | None]
    current_period_end: Mapped[datetime | None]
    cancel_at_period_end: Mapped[bool] = mapped_column(default=False)
    canceled_at: Mapped[datetime | None]
    past_due_since: Mapped[datetime | None]
    version: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Invoice(Base):
    """A Stripe invoice's outcome; amounts in the currency's minor unit (cents)."""

    __tablename__ = "invoices"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)  # in_...
    user_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), index=True
    )
    stripe_customer_id: Mapped[str] = mapped_column(String(255))
    subscription_id: Mapped[str | None] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(32))  # paid | payment_failed
    currency: Mapped[str] = mapped_column(String(3))
    amount_due: Mapped[int] = mapped_column(BigInteger)
    amount_paid: Mapped[int] = mapped_column(BigInteger)
    attempt_count: Mapped[int] = mapped_column(default=0)
    hosted_invoice_url: Mapped[str | None] = mapped_column(Text)
    version: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class StripeEvent(Base):
    """Every verified Stripe event, keyed by its id: a second delivery finds it and stops."""

    __tablename__ = "stripe_events"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)  # evt_...
    type: Mapped[str] = mapped_column(String(100))
    created: Mapped[datetime]  # when Stripe created the event
    livemode: Mapped[bool] = mapped_column(default=False)
    outcome: Mapped[str] = mapped_column(String(32))  # applied | stale | ignored | unmatched
    payload: Mapped[dict[str, Any]]
    received_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class EmailMessage(Base):
    """Every email Stratus sent or meant to send: the local outbox and the sent history."""

    __tablename__ = "email_messages"
    __table_args__ = (Index("ix_email_messages_to_email_created_at", "to_email", "created_at"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), index=True
    )
    to_email: Mapped[str] = mapped_column(String(320))
    template: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(300))
    body_text: Mapped[str] = mapped_column(Text)
    backend: Mapped[str] = mapped_column(String(16))  # outbox | sendgrid
    status: Mapped[str] = mapped_column(String(16))  # outbox | sending | sent | suppressed | failed
    provider_message_id: Mapped[str | None] = mapped_column(String(255))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None]


class EmailEvent(Base):
    """A SendGrid event (delivered, open, bounce, ...), keyed by `sg_event_id`."""

    __tablename__ = "email_events"
    __table_args__ = (Index("ix_email_events_email_occurred_at", "email", "occurred_at"),)

    sg_event_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    email: Mapped[str] = mapped_column(String(320))
    user_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), index=True
    )
    event: Mapped[str] = mapped_column(String(32))
    occurred_at: Mapped[datetime]
    sg_message_id: Mapped[str | None] = mapped_column(String(255))
    reason: Mapped[str | None] = mapped_column(Text)
    payload: Mapped[dict[str, Any]]
    received_at: Mapped[datetime] = mapped_column(default=utcnow)


class EmailSuppression(Base):
    """An address Stratus no longer sends to: it bounced, reported spam or unsubscribed."""

    __tablename__ = "email_suppressions"

    email: Mapped[str] = mapped_column(String(320), primary_key=True)
    reason: Mapped[str] = mapped_column(String(32))
    sg_event_id: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
