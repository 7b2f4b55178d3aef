"""`stratus cleanup` and `stratus admin`: the operator's commands, on the configured database.

`cleanup` runs what Cloud Scheduler triggers in the cloud (shared_layer/maintenance.py) and
prints its report as JSON. `admin grant|revoke EMAIL` sets the `is_admin` flag that the metrics
read-out, the dashboard and `metrics_cleanup` check; `admin list` shows who has it. Both read
DATABASE_URL (or CLOUD_SQL_INSTANCE) like the functions do, and print for a person at a
terminal.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading

logger = logging.getLogger(__name__)


def cleanup(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from shared_layer.config import ConfigError
    from shared_layer.logging_config import configure_logging
    from shared_layer.maintenance import run_cleanup

    configure_logging(os.environ.get("LOG_LEVEL", "WARNING"))  # the report says what happened
    try:
        report = run_cleanup()
    except (SQLAlchemyError, ConfigError) as exc:
        print(f"stratus cleanup: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report.model_dump(mode="json"), indent=2))
    return 0


def start_cleanup_timer(interval: float) -> threading.Event:
    """Run the cleanup every `interval` seconds on a daemon thread: the local stack's Cloud
    Scheduler. Set the returned event to stop it. A failed run is logged; the next one comes."""
    from shared_layer.maintenance import run_cleanup

    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval):
            try:
                report = run_cleanup()
            except Exception:
                logger.exception("the scheduled cleanup failed")
                continue
            if report.status != "nothing_to_do":
                logger.info("scheduled cleanup: %s", report.message)

    threading.Thread(target=loop, name="stratus-cleanup-timer", daemon=True).start()
    return stop


def admin(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from shared_layer.config import ConfigError
    from shared_layer.database import session_scope
    from shared_layer.errors import NotFound
    from shared_layer.services.admin import list_admins, set_admin

    try:
        with session_scope() as session:
            if args.action == "list":
                for user in list_admins(session):
                    print(f"{user.email}\t{user.id}")
                return 0
            if not args.email:
                print(f"stratus admin {args.action}: give the account's email", file=sys.stderr)
                return 2
            user = set_admin(session, email=args.email, admin=args.action == "grant")
            state = "an administrator" if user.is_admin else "not an administrator"
            print(f"{user.email} ({user.id}) is {state}")
    except NotFound as exc:
        print(f"stratus admin: {exc.detail}", file=sys.stderr)
        return 1
    except (SQLAlchemyError, ConfigError) as exc:
        print(f"stratus admin: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = commands.add_parser(
        "cleanup",
        help="delete expired metrics and reap lapsed task leases once (what the scheduler runs)",
        description="Run metrics_cleanup's job against the configured database and print the "
        "report: rows deleted per table, tasks requeued, failed and republished.",
    )
    run.set_defaults(run=cleanup)

    grant = commands.add_parser(
        "admin",
        help="grant, revoke or list administrators (the metrics, dashboard and cleanup)",
        description="Set or clear an account's is_admin flag, or list the administrators.",
    )
    grant.add_argument("action", choices=["grant", "revoke", "list"])
    grant.add_argument("email", nargs="?", help="the account's email (grant, revoke)")
    grant.set_defaults(run=admin)
