"""Retention, the run lock and the lease reaper, below the HTTP function: batched deletes that
spare young rows whatever their id, a deadline that leaves the rest for the next run, one
holder of the lock at a time, and lapsed leases settled once, alike by the claim and the
reaper."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import cast

from sqlalchemy import Table, func, select, update

from shared_layer.database import session_scope
from shared_layer.maintenance import LOCK_NAME, run_cleanup
from shared_layer.models import ApiCallMetric, Task, TaskStatus, utcnow
from shared_layer.retention import delete_expired
from shared_layer.run_lock import advisory_key, exclusive_run

TABLE = cast(Table, ApiCallMetric.__table__)
NOW = datetime(2026, 3, 1, tzinfo=UTC)


def _rows(*created: datetime) -> None:
    with session_scope() as session:
        for at in created:
            session.add(
                ApiCallMetric(
                    created_at=at,
                    function="f",
                    route="/r",
                    method="GET",
                    status_code=200,
                    duration_ms=1.0,
                )
            )


def _remaining() -> list[datetime]:
    with session_scope() as session:
        return sorted(session.scalars(select(ApiCallMetric.created_at)))


def test_only_rows_older_than_the_cutoff_go_whatever_order_they_were_inserted_in(db):
    old = [NOW - timedelta(days=d) for d in (40, 35, 31)]
    young = [NOW - timedelta(days=d) for d in (29, 1)]
    _rows(young[0], old[0], young[1], old[2], old[1])  # ids do not follow the times
    with db.connect() as connection:
        result = delete_expired(
            connection,
            TABLE,
            cutoff=NOW - timedelta(days=30),
            batch_size=100,
            batch_seconds=0.5,
            deadline=time.monotonic() + 60,
        )
    assert (result.deleted, result.complete) == (3, True)
    assert _remaining() == sorted(young)


def test_each_batch_is_its_own_transaction_of_at_most_the_batch_size(db):
    _rows(*[NOW - timedelta(days=40, minutes=i) for i in range(25)])
    with db.connect() as connection:
        result = delete_expired(
            connection,
            TABLE,
            cutoff=NOW,
            batch_size=10,
            batch_seconds=5.0,  # would let batches grow; the first ones are 10 rows
            deadline=time.monotonic() + 60,
        )
    assert result.deleted == 25
    assert result.batches >= 2
    assert result.longest_batch_ms > 0


def test_a_run_past_its_deadline_stops_and_the_next_one_goes_on(db):
    _rows(*[NOW - timedelta(days=40, minutes=i) for i in range(30)])
    with db.connect() as connection:
        first = delete_expired(
            connection, TABLE, cutoff=NOW, batch_size=10, batch_seconds=0.5, deadline=0.0
        )
        assert (first.deleted, first.complete) == (0, False)
        second = delete_expired(
            connection,
            TABLE,
            cutoff=NOW,
            batch_size=10,
            batch_seconds=0.5,
            deadline=time.monotonic() + 60,
        )
    assert (second.deleted, second.complete) == (30, True)


def test_a_cleanup_stopped_by_its_time_budget_reports_partial(db, settings_env):
    settings_env(METRICS_CLEANUP_MAX_SECONDS="0.000001")
    _rows(NOW - timedelta(days=400))
    report = run_cleanup(now=NOW)
    assert report.status == "partial"
    assert "next run goes on" in report.message


def test_the_lock_has_one_holder_at_a_time_and_is_released(db):
    with exclusive_run(db, LOCK_NAME) as first:
        assert first is not None
        with exclusive_run(db, LOCK_NAME) as second:
            assert second is None
        with exclusive_run(db, "another.job") as other:
            assert other is not None  # locks are per name
    with exclusive_run(db, LOCK_NAME) as again:
        assert again is not None


def test_the_advisory_lock_is_held_by_the_server_until_released(pg):
    key = advisory_key(LOCK_NAME)
    holders = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = :low"
    low = key & 0xFFFFFFFF
    from sqlalchemy import text

    with exclusive_run(pg, LOCK_NAME) as held:
        assert held is not None
        with pg.connect() as probe:
            assert probe.execute(text(holders), {"low": low}).scalar_one() == 1
    with pg.connect() as probe:
        assert probe.execute(text(holders), {"low": low}).scalar_one() == 0


def test_two_cleanups_started_together_delete_each_row_once(db):
    _rows(*[NOW - timedelta(days=40, seconds=i) for i in range(200)])
    reports = []
    barrier = threading.Barrier(2)

    def run() -> None:
        barrier.wait()
        reports.append(run_cleanup(now=NOW))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    deleted = sum(r.deleted.get("api_call_metrics", 0) for r in reports)
    assert deleted == 200  # never 400: counts of rows actually deleted, once
    assert _remaining() == []
    assert {r.status for r in reports} <= {"done", "skipped", "nothing_to_do"}


# -- leases --------------------------------------------------------------------------------


def _lapsed_task(queued_task, *, attempts: int) -> uuid.UUID:
    task = queued_task("Say hello")
    past = utcnow() - timedelta(minutes=1)
    with session_scope() as session:
        session.execute(
            update(Task)
            .where(Task.id == task.task_id)
            .values(status="running", attempts=attempts, lease_expires_at=past)
        )
    return task.task_id


def _state(task_id: uuid.UUID) -> tuple[str, int, str | None]:
    with session_scope() as session:
        task = session.get(Task, task_id)
        assert task is not None
        return task.status, task.attempts, task.error


def test_the_claim_and_the_reaper_fail_a_lapsed_last_attempt_alike(db, queued_task):
    from shared_layer.reaper import reap_lapsed_leases
    from shared_layer.services.task_execution import run_task

    claimed = _lapsed_task(queued_task, attempts=3)
    reaped = _lapsed_task(queued_task, attempts=3)
    assert run_task(claimed) == "failed"  # a redelivered message finds it first
    result = reap_lapsed_leases(now=utcnow())
    assert result.failed == [reaped]
    assert _state(claimed) == _state(reaped)  # same status, attempts and reason
    assert _state(claimed)[0] == TaskStatus.FAILED.value
    assert _state(claimed)[1] == 3


def test_a_lapsed_lease_with_attempts_left_is_claimed_directly_by_a_redelivery(db, queued_task):
    from shared_layer.services.task_execution import run_task

    task_id = _lapsed_task(queued_task, attempts=1)
    assert run_task(task_id) == "succeeded"
    assert _state(task_id)[:2] == (TaskStatus.SUCCEEDED.value, 2)


def test_concurrent_reapers_settle_each_lapsed_lease_once(pg, queued_task):
    from shared_layer.reaper import reap_lapsed_leases

    ids = {_lapsed_task(queued_task, attempts=1) for _ in range(5)}
    results = []
    barrier = threading.Barrier(4)

    def reap() -> None:
        barrier.wait()
        results.append(reap_lapsed_leases(now=utcnow()))

    threads = [threading.Thread(target=reap) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    requeued = [task_id for r in results for task_id in r.requeued]
    assert sorted(requeued) == sorted(ids)  # each exactly once across the four
    with session_scope() as session:
        states = session.execute(
            select(Task.status, func.count()).where(Task.id.in_(ids)).group_by(Task.status)
        ).all()
    assert states == [("queued", 5)]
