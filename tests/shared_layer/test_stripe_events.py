"""record_stripe_event(s) without the webhook: alone in a plain transaction (both backends),
in a lean one, and against a concurrent transaction on PostgreSQL that creates the same
subscription or stores the same event first."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from shared_layer.database import session_scope
from shared_layer.lean_transaction import LeanTransactions
from shared_layer.schemas.billing import StripeEventIn
from shared_layer.services.stripe_events import EventReceipt, record_stripe_event
from tests.functions.test_stripe_webhook import (
    T0,
    link_customer,
    outcomes,
    stored_subscription,
    sub_event,
)
from tests.shared_layer.test_group_commit import wait_until
from tests.support.fake_stripe import event, invoice

pytestmark = pytest.mark.usefixtures("stripe_settings")

Transaction = Callable[[], AbstractContextManager[Session]]


def record(evt: dict[str, Any], transaction: Transaction = session_scope) -> EventReceipt:
    with transaction() as session:
        return record_stripe_event(session, event=StripeEventIn.model_validate(evt), payload=evt)


@pytest.mark.parametrize("transaction", ["plain", "lean"])
def test_events_recorded_one_by_one_take_effect_as_through_the_webhook(db, user_token, transaction):
    tx: Transaction = session_scope if transaction == "plain" else LeanTransactions()
    user_id, _ = user_token(email="payer@example.com")
    customer = link_customer(user_id)
    failed = invoice("in_1", customer, subscription_id="sub_a", amount_due=1999)
    evts = [
        sub_event("created", "sub_a", customer, T0, price="price_team"),
        sub_event("updated", "sub_a", customer, T0 + 9, status="past_due", price="price_team"),
        sub_event("updated", "sub_a", customer, T0 + 5),
        event("invoice.payment_failed", failed, created=T0 + 10),
    ]

    receipts = [record(e, tx) for e in [*evts, evts[1]]]

    assert [r.outcome for r in receipts] == ["applied", "applied", "stale", "applied", "duplicate"]
    row = stored_subscription("sub_a")
    assert (row.status, row.plan, row.version) == ("past_due", "team", T0 + 9)
    (email,) = receipts[3].emails
    assert (email.to, email.template, email.context["plan"]) == (
        "payer@example.com",
        "payment_failed",
        "team",
    )
    assert outcomes()[evts[2]["id"]] == "stale"


def _waiting_on_a_lock(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
            ).scalar_one()
        )


def _while_held(
    pg: Engine, first: dict[str, Any], second: dict[str, Any]
) -> tuple[EventReceipt, EventReceipt]:
    """Record `first` in a transaction left open until `second`, recorded in a lean
    transaction on another thread, waits on it; then commit the first."""
    lean = LeanTransactions()
    with ThreadPoolExecutor(max_workers=1) as pool:
        with session_scope() as session:
            held = record_stripe_event(
                session, event=StripeEventIn.model_validate(first), payload=first
            )
            later: Future[EventReceipt] = pool.submit(record, second, lean)
            wait_until(lambda: _waiting_on_a_lock(pg) == 1, "the second waits on the first")
        result = later.result(30)
    lean.close()
    return held, result


def test_a_subscription_created_meanwhile_gets_the_newer_event_applied_on_top(pg, user_token):
    user_id, _ = user_token()
    customer = link_customer(user_id)
    created = sub_event("created", "sub_a", customer, T0)
    newer = sub_event("updated", "sub_a", customer, T0 + 5, status="past_due")

    first, second = _while_held(pg, created, newer)

    assert (first.outcome, second.outcome) == ("applied", "applied")
    row = stored_subscription("sub_a")
    assert (row.status, row.version) == ("past_due", T0 + 5)


def test_a_subscription_created_meanwhile_by_a_newer_event_makes_the_older_one_stale(
    pg, user_token
):
    user_id, _ = user_token()
    customer = link_customer(user_id)
    newer = sub_event("updated", "sub_a", customer, T0 + 5, status="past_due")
    older = sub_event("created", "sub_a", customer, T0)

    first, second = _while_held(pg, newer, older)

    assert (first.outcome, second.outcome) == ("applied", "stale")
    assert stored_subscription("sub_a").version == T0 + 5


def test_the_same_event_in_a_concurrent_transaction_takes_effect_once(pg, user_token):
    user_id, _ = user_token()
    customer = link_customer(user_id)
    created = sub_event("created", "sub_a", customer, T0)

    first, second = _while_held(pg, created, created)

    assert (first.duplicate, second.duplicate, second.outcome) == (False, True, "duplicate")
    assert len(outcomes()) == 1


def test_no_thread_is_started_by_importing_the_webhook():
    before = {t.name for t in threading.enumerate()}
    import importlib.util

    from tests.conftest import FUNCTIONS

    spec = importlib.util.spec_from_file_location(
        "stripe_webhook_import_probe", FUNCTIONS / "stripe_webhook" / "main.py"
    )
    assert spec is not None
    assert spec.loader is not None
    spec.loader.exec_module(importlib.util.module_from_spec(spec))

    assert {t.name for t in threading.enumerate()} == before


def _terminate_lean_connections(pg: Engine) -> int:
    """Drop, from the server's side, every other idle connection (the lean ones)."""
    with pg.connect() as conn:
        return int(
            conn.execute(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                    "AND state = 'idle'"
                )
            ).scalar_one()
        )


def test_a_lean_connection_dropped_while_idle_is_replaced_before_the_next_event(pg, user_token):
    user_id, _ = user_token()
    customer = link_customer(user_id)
    lean = LeanTransactions(ping_after_idle=0)
    record(sub_event("created", "sub_a", customer, T0), lean)
    assert _terminate_lean_connections(pg) >= 1

    receipt = record(sub_event("updated", "sub_a", customer, T0 + 5, status="past_due"), lean)

    assert receipt.outcome == "applied"
    assert stored_subscription("sub_a").status == "past_due"
    lean.close()


def test_without_the_idle_check_a_dropped_connection_fails_one_transaction_only(pg, user_token):
    user_id, _ = user_token()
    customer = link_customer(user_id)
    lean = LeanTransactions(ping_after_idle=3600)
    record(sub_event("created", "sub_a", customer, T0), lean)
    assert _terminate_lean_connections(pg) >= 1
    updated = sub_event("updated", "sub_a", customer, T0 + 5, status="past_due")

    with pytest.raises(Exception, match=r"(?i)network|reset|terminat|closed"):
        record(updated, lean)
    receipt = record(updated, lean)  # a new connection; nothing of the first try was kept

    assert (receipt.duplicate, receipt.outcome) == (False, "applied")
    lean.close()
