"""metrics_cleanup: who may call it (Google OIDC verified for real, or an admin), what it deletes
and reaps, the lock against a second run, and its answers to bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from shared_layer.database import session_scope
from shared_layer.maintenance import LOCK_NAME
from shared_layer.models import (
    ApiCallMetric,
    Task,
    TaskMetric,
    TaskStatus,
    ThrottleCounter,
    utcnow,
)
from shared_layer.run_lock import exclusive_run
from tests.conftest import FUNCTIONS, ROOT, SCHEDULER_AUDIENCE, SCHEDULER_EMAIL, table_counts


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _metric_rows(*ages_in_days: float) -> None:
    now = utcnow()
    with session_scope() as session:
        for age in ages_in_days:
            session.add(
                ApiCallMetric(
                    created_at=now - timedelta(days=age),
                    function="agents",
                    route="/agents",
                    method="GET",
                    status_code=200,
                    duration_ms=1.0,
                )
            )
            session.add(
                TaskMetric(
                    created_at=now - timedelta(days=age * 3),
                    task_id=uuid.uuid4(),
                    agent_id=uuid.uuid4(),
                    user_id=uuid.uuid4(),
                    status="succeeded",
                    attempts=1,
                    queue_wait_ms=1.0,
                    run_ms=2.0,
                )
            )


def _counts() -> tuple[int, int]:
    with session_scope() as session:
        api = session.scalar(select(func.count()).select_from(ApiCallMetric))
        tasks = session.scalar(select(func.count()).select_from(TaskMetric))
    return int(api or 0), int(tasks or 0)


# -- the scheduler's identity --------------------------------------------------------------


def test_scheduler_token_runs_the_cleanup_and_reports_rows_deleted_per_table(
    db, client, scheduler_identity
):
    # API-call rows 40 and 31 days old are past the 30-day retention; task rows are thrice as
    # old (120, 93 days) against 90 days; the 1-day-old ones stay.
    _metric_rows(40, 31, 1)
    r = client("metrics_cleanup").post("/", headers=_bearer(scheduler_identity.token()))
    assert r.status_code == 200, r.get_data(as_text=True)
    body = r.json
    assert body["status"] == "done"
    assert body["deleted"] == {"api_call_metrics": 2, "task_metrics": 2, "throttle_counters": 0}
    assert body["batches"] >= 2
    assert "deleted 4 rows past their retention" in body["message"]
    api_left, tasks_left = _counts()
    assert tasks_left == 1
    assert api_left == 1 + 1  # the young row, and this very request's own metric


def test_cleanup_with_nothing_to_do_says_so(db, client, scheduler_identity):
    _metric_rows(1)
    r = client("metrics_cleanup").post("/", headers=_bearer(scheduler_identity.token()))
    assert r.status_code == 200
    assert r.json["status"] == "nothing_to_do"
    assert r.json["message"].startswith("nothing to delete or reap")
    assert r.json["deleted"] == {"api_call_metrics": 0, "task_metrics": 0, "throttle_counters": 0}
    assert (r.json["requeued"], r.json["failed"], r.json["republished"]) == (0, 0, 0)


def test_cleanup_deletes_the_throttle_counters_past_their_memory(db, client, scheduler_identity):
    from shared_layer.throttle import Key, Limit, get_throttle

    brief = Limit("brief", free=5, cap_seconds=1, forget_seconds=0.2)
    get_throttle().attempt(Key(brief, "gone"))
    time.sleep(0.3)
    get_throttle().attempt(Key(brief, "kept"))

    r = client("metrics_cleanup").post("/", headers=_bearer(scheduler_identity.token()))

    assert r.json["deleted"]["throttle_counters"] == 1
    with session_scope() as session:
        [kept] = session.scalars(select(ThrottleCounter.key)).all()
    assert kept == Key(brief, "kept").id


@pytest.mark.parametrize(
    ("claims", "status", "words"),
    [
        ({"audience": "https://someone-else.a.run.app/"}, 401, "does not verify"),
        ({"expires_in": -3600}, 401, "does not verify"),
        ({"issuer": "https://evil.example.com"}, 401, "not issued by Google"),
        ({"email": "intruder@other.iam.gserviceaccount.com"}, 403, "scheduler's identity"),
        ({"email_verified": False}, 403, "scheduler's identity"),
    ],
    ids=["wrong-audience", "expired", "wrong-issuer", "other-account", "unverified-email"],
)
def test_google_tokens_that_are_not_the_schedulers_are_refused(
    db, client, scheduler_identity, json_logs, claims, status, words
):
    _metric_rows(40)
    before = _counts()
    token = scheduler_identity.mint(
        **{"audience": SCHEDULER_AUDIENCE, "email": SCHEDULER_EMAIL, **claims}
    )
    r = client("metrics_cleanup").post("/", headers=_bearer(token))
    assert r.status_code == status, r.get_data(as_text=True)
    assert r.mimetype == "application/problem+json"
    assert words in r.json["detail"]
    assert _counts()[0] >= before[0]  # nothing deleted (its own metric may be added)
    assert _counts()[1] == before[1]
    events = {e["logging.googleapis.com/labels"].get("security_event") for e in json_logs}
    assert events & {"scheduler_token_refused", "scheduler_identity_refused", "auth_failed"}


def test_a_token_signed_by_another_key_is_refused(db, client, scheduler_identity):
    forged = scheduler_identity.mint(
        audience=SCHEDULER_AUDIENCE,
        email=SCHEDULER_EMAIL,
        signer_key=scheduler_identity.other_key(),
    )
    r = client("metrics_cleanup").post("/", headers=_bearer(forged))
    assert r.status_code == 401
    assert "does not verify" in r.json["detail"]


def test_google_tokens_are_refused_when_no_scheduler_identity_is_configured(
    db, client, scheduler_identity, settings_env
):
    settings_env(SCHEDULER_SERVICE_ACCOUNT_EMAIL=None)
    r = client("metrics_cleanup").post("/", headers=_bearer(scheduler_identity.token()))
    assert r.status_code == 401
    assert "SCHEDULER_SERVICE_ACCOUNT_EMAIL" in r.json["detail"]
    assert scheduler_identity.requests == 0  # refused before fetching any certificate


def test_unreachable_certificates_are_a_retryable_503(db, client, scheduler_identity):
    scheduler_identity.status = 500
    r = client("metrics_cleanup").post("/", headers=_bearer(scheduler_identity.token()))
    assert r.status_code == 503
    assert r.json["type"].endswith("/upstream-unavailable")


# -- administrators ------------------------------------------------------------------------


def test_an_administrator_may_run_the_cleanup(db, client, admin_token):
    _metric_rows(45)
    _, bearer = admin_token()
    r = client("metrics_cleanup").post("/", headers={"Authorization": bearer})
    assert r.status_code == 200
    assert r.json["deleted"]["api_call_metrics"] == 1


def test_a_user_who_is_not_an_administrator_is_forbidden(db, client, user_token, json_logs):
    _metric_rows(45)
    before = _counts()
    _, bearer = user_token()
    r = client("metrics_cleanup").post("/", headers={"Authorization": bearer})
    assert r.status_code == 403
    assert r.json["type"].endswith("/forbidden")
    assert _counts()[1] == before[1]
    denied = [
        e
        for e in json_logs
        if e["logging.googleapis.com/labels"].get("security_event") == "admin_access_denied"
    ]
    assert len(denied) == 1


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer not-a-jwt"}],
    ids=["none", "basic", "garbage"],
)
def test_missing_or_malformed_credentials_are_401(db, client, headers):
    r = client("metrics_cleanup").post("/", headers=headers)
    assert r.status_code == 401
    assert "WWW-Authenticate" in r.headers


# -- bad input -----------------------------------------------------------------------------


def test_a_body_must_be_empty_or_an_empty_json_object(db, client, scheduler_identity):
    headers = _bearer(scheduler_identity.token())
    metrics = client("metrics_cleanup")
    before = table_counts(db)
    assert metrics.post("/", json={"dry_run": True}, headers=headers).status_code == 400
    assert (
        metrics.post("/", data="{", content_type="application/json", headers=headers).status_code
        == 400
    )
    assert (
        metrics.post("/", data="go", content_type="text/plain", headers=headers).status_code == 415
    )
    assert metrics.get("/", headers=headers).status_code == 405
    assert metrics.post("/nope", headers=headers).status_code == 404
    assert table_counts(db) == before
    assert metrics.post("/", json={}, headers=headers).status_code == 200
    assert (
        metrics.post(
            "/", headers={**headers, "Content-Type": "application/octet-stream"}
        ).status_code
        == 200
    )


# -- one run at a time ---------------------------------------------------------------------


def test_a_second_run_while_one_holds_the_lock_does_nothing(db, client, scheduler_identity):
    _metric_rows(40)
    with exclusive_run(db, LOCK_NAME) as held:
        assert held is not None
        r = client("metrics_cleanup").post("/", headers=_bearer(scheduler_identity.token()))
        assert r.status_code == 200
        assert r.json["status"] == "skipped"
        assert "another cleanup run" in r.json["message"]
        assert r.json["deleted"] == {}
    r = client("metrics_cleanup").post("/", headers=_bearer(scheduler_identity.token()))
    assert r.json["status"] == "done"
    assert r.json["deleted"]["api_call_metrics"] == 1


# -- reaping -------------------------------------------------------------------------------


def _lapse(task_id: uuid.UUID, *, attempts: int) -> None:
    past = utcnow() - timedelta(minutes=5)
    with session_scope() as session:
        session.execute(
            update(Task)
            .where(Task.id == task_id)
            .values(status="running", attempts=attempts, lease_expires_at=past, started_at=past)
        )


def _task(task_id: uuid.UUID) -> Task:
    with session_scope() as session:
        task = session.get(Task, task_id)
        assert task is not None
        return task


def test_a_lapsed_lease_is_requeued_and_published_and_then_runs(
    db, client, scheduler_identity, queued_task, push_to_task_runner
):
    task = queued_task("Say hello")
    _lapse(task.task_id, attempts=1)
    r = client("metrics_cleanup").post("/", headers=_bearer(scheduler_identity.token()))
    assert r.status_code == 200
    assert (r.json["requeued"], r.json["failed"], r.json["republished"]) == (1, 0, 1)
    assert push_to_task_runner == [200]  # published again, delivered, run
    done = _task(task.task_id)
    assert done.status == TaskStatus.SUCCEEDED.value
    assert done.attempts == 2


def test_a_lapsed_lease_on_the_last_attempt_fails_with_the_reason(
    db, client, scheduler_identity, queued_task, push_to_task_runner
):
    task = queued_task("Say hello")
    _lapse(task.task_id, attempts=3)  # TASK_MAX_ATTEMPTS is 3
    r = client("metrics_cleanup").post("/", headers=_bearer(scheduler_identity.token()))
    assert (r.json["requeued"], r.json["failed"], r.json["republished"]) == (0, 1, 0)
    failed = _task(task.task_id)
    assert failed.status == TaskStatus.FAILED.value
    assert failed.error == (
        "gave up after 3 attempts: the lease of the last one lapsed "
        "(the runner stopped without reporting)"
    )
    assert push_to_task_runner == []


def test_a_queued_task_never_published_is_republished_once_per_interval(
    db, client, scheduler_identity, queued_task
):
    from shared_layer.pubsub import get_publisher

    task = queued_task("Say hello")  # stored, never published: the outbox is empty
    old = utcnow() - timedelta(hours=1)
    with session_scope() as session:
        session.execute(update(Task).where(Task.id == task.task_id).values(updated_at=old))
    headers = _bearer(scheduler_identity.token())
    first = client("metrics_cleanup").post("/", headers=headers)
    second = client("metrics_cleanup").post("/", headers=headers)
    assert first.json["republished"] == 1
    assert second.json["republished"] == 0  # not again before TASK_REPUBLISH_AFTER_SECONDS
    outbox = get_publisher().outbox  # type: ignore[attr-defined]
    assert [json.loads(m.data)["task_id"] for m in outbox] == [str(task.task_id)]
    assert _task(task.task_id).status == TaskStatus.QUEUED.value


def test_a_recently_queued_task_is_left_alone(db, client, scheduler_identity, queued_task):
    queued_task("Say hello")
    r = client("metrics_cleanup").post("/", headers=_bearer(scheduler_identity.token()))
    assert r.json["republished"] == 0
    assert r.json["status"] == "nothing_to_do"


# -- lean imports --------------------------------------------------------------------------

_IMPORT_PROBE = """
import json, sys
import functions_framework
app = functions_framework.create_app(target="metrics_cleanup", source=sys.argv[1])
response = app.test_client().post("/")
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("openai", "stripe")
               or m.startswith(("google.cloud.pubsub", "google.cloud.secretmanager")))
print(json.dumps({"status": response.status_code, "heavy": heavy}))
"""


def test_metrics_cleanup_imports_no_openai_stripe_or_pubsub_to_answer(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "SECRET_MANAGER"))}
    env.update(
        DATABASE_URL=f"sqlite:///{tmp_path / 'c.db'}", STRATUS_ENV="local", LOG_LEVEL="ERROR"
    )
    done = subprocess.run(
        [sys.executable, "-c", _IMPORT_PROBE, str(FUNCTIONS / "metrics_cleanup" / "main.py")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(ROOT)},
        timeout=60,
        check=True,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["status"] == 401  # the function really answered
    assert result["heavy"] == []
