"""`stratus cleanup`, `stratus admin` and the local stack's cleanup timer, on the configured
database."""

from __future__ import annotations

import json
import time
from datetime import timedelta

from sqlalchemy import func, select

from shared_layer.database import session_scope
from shared_layer.models import ApiCallMetric, User, utcnow
from stratus.cli import main


def _old_metric() -> None:
    with session_scope() as session:
        session.add(
            ApiCallMetric(
                created_at=utcnow() - timedelta(days=90),
                function="agents",
                route="/agents",
                method="GET",
                status_code=200,
                duration_ms=1.0,
            )
        )


def _metric_count() -> int:
    with session_scope() as session:
        return int(session.scalar(select(func.count()).select_from(ApiCallMetric)) or 0)


def test_stratus_cleanup_runs_the_job_and_prints_its_report(db, capsys):
    _old_metric()
    assert main(["cleanup"]) == 0
    out = capsys.readouterr().out
    out = "\n" + out
    report = json.loads(out[out.index("\n{\n") :])  # the printed report, after any log line
    assert report["status"] == "done"
    assert report["deleted"]["api_call_metrics"] == 1
    assert _metric_count() == 0
    assert main(["cleanup"]) == 0
    again = capsys.readouterr().out
    assert '"status": "nothing_to_do"' in again


def test_stratus_cleanup_on_an_unreachable_database_fails_with_a_message(settings_env, capsys):
    settings_env(DATABASE_URL="postgresql+pg8000://postgres@127.0.0.1:1/none")
    assert main(["cleanup"]) == 1
    assert "stratus cleanup:" in capsys.readouterr().err


def test_stratus_admin_grants_lists_and_revokes(db, user_token, capsys):
    user_id, _ = user_token(email="ops@example.com")
    assert main(["admin", "grant", "OPS@example.com"]) == 0
    assert "is an administrator" in capsys.readouterr().out
    assert main(["admin", "list"]) == 0
    assert f"ops@example.com\t{user_id}" in capsys.readouterr().out
    assert main(["admin", "revoke", "ops@example.com"]) == 0
    with session_scope() as session:
        user = session.get(User, user_id)
        assert user is not None
        assert user.is_admin is False


def test_stratus_admin_names_an_unknown_account_or_a_missing_email(db, capsys):
    assert main(["admin", "grant", "nobody@example.com"]) == 1
    assert "no account with email nobody@example.com" in capsys.readouterr().err
    assert main(["admin", "grant"]) == 2


def test_the_local_timer_runs_the_cleanup_until_stopped(db):
    from stratus.ops import start_cleanup_timer

    _old_metric()
    stop = start_cleanup_timer(0.05)
    try:
        deadline = time.monotonic() + 5
        while _metric_count() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _metric_count() == 0
    finally:
        stop.set()
