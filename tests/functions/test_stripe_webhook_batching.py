"""stripe_webhook's group commit, on both backends: deliveries that wait together are stored
and applied in one transaction; an event that fails to apply is refused alone (5xx, nothing of
it stored) while the others of its batch succeed; copies in one batch take effect once.

Each test first holds the database's write lock (a table lock on PostgreSQL, SQLite's one
writer) so that both committers block on a first delivery each; the deliveries under test then
queue behind them and, once the lock is released, go in one batch."""

from __future__ import annotations

import inspect
import json
import sqlite3
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from shared_layer.group_commit import GroupCommitter
from tests.conftest import STRIPE_WEBHOOK_SECRET, function_app, table_counts
from tests.functions.test_stripe_webhook import (
    T0,
    _drop_failing_trigger,
    _install_failing_trigger,
    link_customer,
    outcomes,
    stored_subscription,
    sub_event,
)
from tests.shared_layer.test_group_commit import wait_until
from tests.support.fake_stripe import stripe_signature

pytestmark = pytest.mark.usefixtures("stripe_settings")


def committer() -> GroupCommitter[Any, Any]:
    """The committer of the stripe_webhook module functions-framework loaded."""
    view = inspect.unwrap(function_app("stripe_webhook").view_functions["run"])
    committer_of: Any = view.__globals__["committer"]
    return committer_of()  # type: ignore[no-any-return]


def post(evt: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    body = json.dumps(evt)
    response = (
        function_app("stripe_webhook")
        .test_client()
        .post(
            "/",
            data=body,
            headers={"Stripe-Signature": stripe_signature(body, STRIPE_WEBHOOK_SECRET)},
            content_type="application/json",
        )
    )
    return response.status_code, dict(response.json or {})


@contextmanager
def write_lock(engine: Engine) -> Iterator[None]:
    """Hold the database's write lock until the block ends (from a connection of its own)."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execute(text("LOCK TABLE stripe_events IN EXCLUSIVE MODE"))
            yield
            conn.rollback()
    else:
        raw = sqlite3.connect(make_url(str(engine.url)).database or "", isolation_level=None)
        raw.execute("BEGIN IMMEDIATE")
        yield
        raw.execute("ROLLBACK")
        raw.close()


@pytest.fixture
def one_batch(db: Engine) -> Iterator[Any]:
    """`one_batch(events)`: deliver the events so that they are applied in one transaction;
    their (status, body) in order."""
    pool = ThreadPoolExecutor(max_workers=16)

    def deliver(blockers: list[dict[str, Any]], events: list[dict[str, Any]]) -> list[Any]:
        gc = committer()
        futures: list[Future[Any]] = []
        with write_lock(db):
            for n, blocker in enumerate(blockers, 1):  # one per committer, each held
                futures.append(pool.submit(post, blocker))
                wait_until(lambda n=n: gc.running == n, f"{n} committers are held")
            futures += [pool.submit(post, evt) for evt in events]
            wait_until(lambda: gc.pending == len(events), "the events wait together")
        return [f.result(30) for f in futures][len(blockers) :]

    yield deliver
    pool.shutdown()


def blockers(customer: str) -> list[dict[str, Any]]:
    return [sub_event("created", f"sub_blocker{n}", customer, T0) for n in range(2)]


def test_deliveries_waiting_together_are_stored_and_applied_in_one_transaction(
    db, user_token, json_logs, one_batch
):
    user_id, _ = user_token()
    customer = link_customer(user_id)
    events = [sub_event("created", f"sub_{n}", customer, T0 + n) for n in range(10)]

    results = one_batch(blockers(customer), events)

    assert [(status, body["outcome"]) for status, body in results] == [(200, "applied")] * 10
    batches = [
        {o["event_id"] for o in line["stripe_events"]}
        for line in json_logs
        if line["message"].startswith("stripe events committed")
    ]
    assert {e["id"] for e in events} in batches  # the ten, in one committed transaction
    assert all(stored_subscription(f"sub_{n}").version == T0 + n for n in range(10))


def test_an_event_that_fails_in_a_batch_is_refused_alone_and_the_others_are_stored(
    db, user_token, json_logs, one_batch
):
    user_id, _ = user_token()
    customer = link_customer(user_id)
    good = [sub_event("created", f"sub_{n}", customer, T0) for n in range(4)]
    boom = sub_event("created", "sub_boom", customer, T0)
    _install_failing_trigger(db)
    try:
        results = one_batch(blockers(customer), [*good[:2], boom, *good[2:]])
        stored = outcomes()
    finally:
        _drop_failing_trigger(db)

    statuses = [status for status, _ in results]
    assert statuses[:2] + statuses[3:] == [200] * 4
    assert statuses[2] >= 500
    assert "disk on fire" not in json.dumps(results[2][1])
    assert boom["id"] not in stored  # neither the event nor its subscription
    assert stored_subscription("sub_boom") is None
    assert all(stored[e["id"]] == "applied" for e in good)
    assert any("running its items one per transaction" in line["message"] for line in json_logs)


def test_copies_of_an_event_in_one_batch_take_effect_once(db, user_token, one_batch):
    user_id, _ = user_token()
    customer = link_customer(user_id)
    created = sub_event("created", "sub_a", customer, T0)
    past_due = sub_event("updated", "sub_a", customer, T0 + 5, status="past_due")
    before = table_counts(db)

    results = one_batch(blockers(customer), [created, past_due, past_due, created, past_due])

    assert [(body["duplicate"], body["outcome"]) for _, body in results] == [
        (False, "applied"),
        (False, "applied"),
        (True, "duplicate"),
        (True, "duplicate"),
        (True, "duplicate"),
    ]
    after = table_counts(db)
    assert after["stripe_events"] == before["stripe_events"] + 4  # two blockers, two events
    assert after["subscriptions"] == before["subscriptions"] + 3
    row = stored_subscription("sub_a")
    assert (row.status, row.version) == ("past_due", T0 + 5)


def test_an_older_event_later_in_the_same_batch_is_stale(db, user_token, one_batch):
    user_id, _ = user_token()
    customer = link_customer(user_id)
    newer = sub_event("updated", "sub_a", customer, T0 + 9, status="past_due")
    older = sub_event("created", "sub_a", customer, T0)

    results = one_batch(blockers(customer), [newer, older])

    assert [body["outcome"] for _, body in results] == ["applied", "stale"]
    row = stored_subscription("sub_a")
    assert (row.status, row.version) == ("past_due", T0 + 9)
