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
from typing import Any, NamedTuple

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from shared_layer.group_commit import GroupCommitter
from tests.conftest import STRIPE_WEBHOOK_SECRET, function_app
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


def webhook_module() -> dict[str, Any]:
    """The globals of the stripe_webhook module functions-framework loaded."""
    view = inspect.unwrap(function_app("stripe_webhook").view_functions["run"])
    return view.__globals__


def committer() -> GroupCommitter[Any, Any, Any]:
    return webhook_module()["committer"]()  # type: ignore[no-any-return]


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


class Batch(NamedTuple):
    results: list[tuple[int, dict[str, Any]]]  # (status, body) of each event, in order
    transactions: int  # transactions committed meanwhile (the blockers' among them)
    fallbacks: int  # batches re-run one event per transaction meanwhile


@pytest.fixture
def one_batch(db: Engine) -> Iterator[Any]:
    """`one_batch(customer, events)`: deliver the events so that they wait together for the
    committer: first one event per committer thread (for subscriptions of `customer`) while
    the database's write lock is held, so each thread blocks on it; then the events, one at a
    time so that they queue in the order given (they arrive in that order); then the lock is
    released."""
    pool = ThreadPoolExecutor(max_workers=16)

    def deliver(customer: str, events: list[dict[str, Any]]) -> Batch:
        gc = committer()
        before = gc.stats
        blockers = [
            sub_event("created", f"sub_blocker{n}", customer, T0)
            for n in range(webhook_module()["COMMITTERS"])
        ]
        futures: list[Future[Any]] = []
        with write_lock(db):
            for n, blocker in enumerate(blockers, 1):
                futures.append(pool.submit(post, blocker))
                wait_until(lambda n=n: gc.running == n, f"{n} committers are held")
            for k, evt in enumerate(events, 1):  # one at a time: they queue in this order
                futures.append(pool.submit(post, evt))
                wait_until(lambda k=k: gc.pending == k, f"{k} events wait together")
        results = [f.result(30) for f in futures]
        assert [status for status, _ in results[: len(blockers)]] == [200] * len(blockers)
        after = gc.stats
        return Batch(
            results[len(blockers) :],
            after.transactions - before.transactions - len(blockers),
            after.fallbacks - before.fallbacks,
        )

    yield deliver
    pool.shutdown()


def test_deliveries_waiting_together_are_stored_and_applied_in_one_transaction(
    db, user_token, one_batch
):
    user_id, _ = user_token()
    customer = link_customer(user_id)
    events = [sub_event("created", f"sub_{n}", customer, T0 + n) for n in range(10)]

    batch = one_batch(customer, events)

    assert [(status, body["outcome"]) for status, body in batch.results] == [(200, "applied")] * 10
    assert (batch.transactions, batch.fallbacks) == (1, 0)  # the ten, in one transaction
    assert all(stored_subscription(f"sub_{n}").version == T0 + n for n in range(10))


def test_an_event_that_fails_in_a_batch_is_refused_alone_and_the_others_are_stored(
    db, user_token, one_batch
):
    user_id, _ = user_token()
    customer = link_customer(user_id)
    good = [sub_event("created", f"sub_{n}", customer, T0) for n in range(4)]
    boom = sub_event("created", "sub_boom", customer, T0)
    _install_failing_trigger(db)
    try:
        batch = one_batch(customer, [*good[:2], boom, *good[2:]])
        stored = outcomes()
    finally:
        _drop_failing_trigger(db)

    statuses = [status for status, _ in batch.results]
    assert statuses[:2] + statuses[3:] == [200] * 4
    assert statuses[2] >= 500
    assert "disk on fire" not in json.dumps(batch.results[2][1])
    assert (batch.transactions, batch.fallbacks) == (0, 1)  # rolled back, re-run one by one
    assert boom["id"] not in stored  # neither the event nor its subscription
    assert stored_subscription("sub_boom") is None
    assert all(stored[e["id"]] == "applied" for e in good)


def test_copies_of_an_event_in_one_batch_take_effect_once(db, user_token, one_batch):
    user_id, _ = user_token()
    customer = link_customer(user_id)
    created = sub_event("created", "sub_a", customer, T0)
    past_due = sub_event("updated", "sub_a", customer, T0 + 5, status="past_due")

    batch = one_batch(customer, [created, past_due, past_due, created, past_due])

    assert [(body["duplicate"], body["outcome"]) for _, body in batch.results] == [
        (False, "applied"),
        (False, "applied"),
        (True, "duplicate"),
        (True, "duplicate"),
        (True, "duplicate"),
    ]
    assert batch.transactions == 1
    assert {created["id"], past_due["id"]} <= set(outcomes())
    row = stored_subscription("sub_a")
    assert (row.status, row.version) == ("past_due", T0 + 5)


def test_an_older_event_later_in_the_same_batch_is_stale(db, user_token, one_batch):
    user_id, _ = user_token()
    customer = link_customer(user_id)
    newer = sub_event("updated", "sub_a", customer, T0 + 9, status="past_due")
    older = sub_event("created", "sub_a", customer, T0)

    batch = one_batch(customer, [newer, older])

    assert [body["outcome"] for _, body in batch.results] == ["applied", "stale"]
    assert batch.transactions == 1
    row = stored_subscription("sub_a")
    assert (row.status, row.version) == ("past_due", T0 + 9)
