"""Running a task: claim it, call the model outside any transaction, store the outcome.

Pub/Sub delivers at least once and sometimes concurrently, so correctness comes from the claim
(shared_layer/services/task_claims.py), not from hoping for one delivery: `run_task` claims in
one short transaction, runs the agent with no transaction open, then settles the claim. Each
claimed run records one task metric (`@monitor_task_execution`, shared_layer/monitoring.py).

The tokens a run's model calls spent go in the usage ledger (services/usage_ledger.py) in the
transaction that settles the run, whatever it settles to: succeeded, failed, queued again, or
fenced out because the claim was lost (the task cancelled, reclaimed, or deleted with its
agent). The spend was real either way; only a runner that dies mid-run takes its tokens with it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from shared_layer.agent_config import AgentRunConfig, resolve_agent_config
from shared_layer.agent_systems import StepRecord, run_agent
from shared_layer.config import get_settings
from shared_layer.database import session_scope
from shared_layer.errors import StratusError, UpstreamError
from shared_layer.logging_config import get_agent_logger, log_task_execution
from shared_layer.models import Agent, Task, TaskStatus, utcnow
from shared_layer.monitoring import current_task_run, monitor_task_execution
from shared_layer.services.quotas import check_model_call
from shared_layer.services.task_claims import (
    claim_task,
    complete_task,
    fail_task,
    release_task,
    settle_lapsed_lease,
)
from shared_layer.services.usage_ledger import record_model_usage
from shared_layer.sql import Db, driver_errors

__all__ = ["run_task"]

logger = get_agent_logger()

Outcome = Literal["succeeded", "failed", "skipped", "missing", "stale"]
LEASE_MARGIN_SECONDS = 30


@dataclass(frozen=True)
class _Job:
    """What a claimed run needs, read in the claim's transaction and used outside any."""

    task_id: uuid.UUID
    attempt: int
    owner_id: uuid.UUID
    agent_id: uuid.UUID
    input: str
    config: AgentRunConfig
    memory: list[dict[str, str]]


@monitor_task_execution("run_task")
def run_task(task_id: uuid.UUID) -> Outcome:
    """Run one delivery of a task. Returns how it ended; raises `UpstreamError` (after putting
    the task back in the queue) when another delivery should try again."""
    claimed = _claim(task_id)
    if isinstance(claimed, str):
        return claimed
    job = claimed
    started = time.perf_counter()
    spent: list[StepRecord] = []  # each model call's step, as soon as it returns
    try:
        run = run_agent(
            config=job.config,
            request=job.input,
            memory=job.memory,
            user_id=job.owner_id,
            before_call=_quota_guard(job),
            steps=spent,
        )
    except UpstreamError as exc:
        with session_scope() as session:
            state = release_task(
                session, task_id=job.task_id, attempt=job.attempt, reason=exc.detail
            )
            _record_spend(session, job, spent)
        _log_end(job, state, started, exc.detail)
        if state == "queued":
            _observe(status="retrying")
            raise
        return state
    except StratusError as exc:
        return _fail(job, exc.detail, started, spent)
    except Exception:
        logger.exception("agent run crashed", task_id=str(job.task_id), attempt=job.attempt)
        reason = "internal error while running the agent; it has been logged"
        return _fail(job, reason, started, spent)
    with session_scope() as session:
        stored = complete_task(
            session,
            task_id=job.task_id,
            attempt=job.attempt,
            result=run.answer.content,
            provider=run.answer.provider,
            model=run.answer.model,
            steps=run.steps,
        )
        _record_spend(session, job, run.steps, provider=run.answer.provider, model=run.answer.model)
    outcome: Outcome = "succeeded" if stored else "stale"
    _log_end(job, outcome, started)
    return outcome


def _record_spend(
    session: Session,
    job: _Job,
    steps: list[StepRecord],
    *,
    provider: str | None = None,
    model: str | None = None,
) -> None:
    """Put what the run's model calls spent in the usage ledger, in the caller's settling
    transaction, and tell the task metric. `provider` and `model` are the answer's, when
    there is one; else the ones the run was configured with."""
    provider = provider or get_settings().llm_mode
    model = model or job.config.model
    prompt_tokens = sum(s.prompt_tokens for s in steps)
    completion_tokens = sum(s.completion_tokens for s in steps)
    record_model_usage(
        Db.of_session(session),
        user_id=job.owner_id,
        agent_id=job.agent_id,
        task_id=job.task_id,
        provider=provider,
        model=model,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
    )
    _observe(
        provider=provider,
        model=model,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
    )


def _observe(**fields: object) -> None:
    """Tell the task metric (`@monitor_task_execution`) what this run learned."""
    observed = current_task_run()
    if observed is not None:
        for name, value in fields.items():
            setattr(observed, name, value)


def _quota_guard(job: _Job) -> Callable[[int], None]:
    """The check before each model call: the owner's plan still includes the model and leaves
    tokens. `QuotaExceeded` / `PlanLimitReached` fail the task with their reason, before any
    model call; a database error while checking is transient (the task is retried)."""

    transient: tuple[type[Exception], ...] = (SQLAlchemyError, *driver_errors())

    def check(run_tokens: int) -> None:
        try:
            with session_scope() as session:
                check_model_call(
                    Db.of_session(session),
                    user_id=job.owner_id,
                    model=job.config.model,
                    run_tokens=run_tokens,
                )
        except transient as exc:
            raise UpstreamError(f"could not check the plan's quota: {type(exc).__name__}") from exc

    return check


def _claim(task_id: uuid.UUID) -> _Job | Outcome:
    """Claim in one short committed transaction, reading what the run needs alongside."""
    settings = get_settings()
    with session_scope() as session:
        task = session.get(Task, task_id)
        if task is None:
            logger.warning("task does not exist; nothing to run", task_id=str(task_id))
            return "missing"
        now = utcnow()
        lapsed = task.lease_expires_at is not None and task.lease_expires_at < now
        if task.status != TaskStatus.QUEUED.value and not (
            task.status == TaskStatus.RUNNING.value and lapsed
        ):
            logger.info("task is %s; nothing to run", task.status, task_id=str(task_id))
            return "skipped"
        if lapsed and task.attempts >= settings.task_max_attempts:
            state = settle_lapsed_lease(session, task_id=task_id, attempts=task.attempts, now=now)
            logger.warning("lapsed lease on the last attempt: %s", state, task_id=str(task_id))
            return "failed" if state == "failed" else "skipped"
        # Waiting since it was queued: created, or put back (release, reaper) for this attempt.
        queued_since = task.created_at if task.attempts == 0 else task.updated_at
        agent = session.get(Agent, task.agent_id)
        config: AgentRunConfig | None = None
        problem = f"agent {task.agent_id} no longer exists"
        if agent is not None:
            try:
                config = resolve_agent_config(agent)
            except StratusError as exc:
                problem = f"agent {task.agent_id} cannot run: {exc.detail}"
        calls = config.model_calls if config else 1
        timeout = config.timeout_seconds if config else settings.agent_timeout_seconds
        lease = timeout * calls * (settings.openai_max_retries + 1) + LEASE_MARGIN_SECONDS
        attempt = claim_task(session, task_id=task_id, lease_seconds=lease)
        if attempt is None:
            logger.info("another runner claimed the task first", task_id=str(task_id))
            return "skipped"
        _observe(
            task_id=task_id,
            agent_id=task.agent_id,
            user_id=task.owner_id,
            attempts=attempt,
            queue_wait_ms=(utcnow() - queued_since).total_seconds() * 1000,
            provider=settings.llm_mode,
            model=config.model if config else None,
        )
        if config is None:
            fail_task(session, task_id=task_id, attempt=attempt, reason=problem)
            logger.warning("task failed before running: %s", problem, task_id=str(task_id))
            return "failed"
        memory = _memory(session, task=task, limit=config.memory_messages)
        return _Job(task_id, attempt, task.owner_id, task.agent_id, task.input, config, memory)


def _memory(session: Session, *, task: Task, limit: int) -> list[dict[str, str]]:
    """The agent's last `limit` succeeded tasks for this owner, oldest first, as a conversation."""
    if limit <= 0:
        return []
    rows = session.execute(
        select(Task.input, Task.result)
        .where(
            Task.agent_id == task.agent_id,
            Task.owner_id == task.owner_id,
            Task.status == TaskStatus.SUCCEEDED.value,
            Task.id != task.id,
        )
        .order_by(Task.finished_at.desc(), Task.created_at.desc())
        .limit(limit)
    ).all()
    memory: list[dict[str, str]] = []
    for task_input, result in reversed(rows):
        memory += [
            {"role": "user", "content": task_input},
            {"role": "assistant", "content": result or ""},
        ]
    return memory


def _fail(job: _Job, reason: str, started: float, spent: list[StepRecord]) -> Outcome:
    with session_scope() as session:
        stored = fail_task(session, task_id=job.task_id, attempt=job.attempt, reason=reason)
        _record_spend(session, job, spent)
    outcome: Outcome = "failed" if stored else "stale"
    _log_end(job, outcome, started, reason)
    return outcome


def _log_end(job: _Job, state: str, started: float, reason: str | None = None) -> None:
    duration_ms = (time.perf_counter() - started) * 1000
    log_task_execution(job.task_id, state, duration_ms, job.owner_id)
    if reason:
        logger.warning(
            "task attempt %s ended %s: %s", job.attempt, state, reason, task_id=str(job.task_id)
        )
