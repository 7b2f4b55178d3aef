"""GroupCommitter on both backends: items waiting together share a transaction, a failing item
is re-run alone and refused alone, results are released only once committed, close drains."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared_layer.database import session_scope
from shared_layer.group_commit import CommitterClosed, GroupCommitter
from shared_layer.idempotency import insert_new
from shared_layer.models import StripeEvent

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def stored_ids() -> set[str]:
    with session_scope() as session:
        return set(session.scalars(select(StripeEvent.id)))


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.005)


class Store:
    """apply_batch for the tests: stores each item as a row, answers its id in upper case.

    An item "boom..." fails; the first batch waits at `gate` (when set) until it opens."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.gate = gate
        self.batches: list[list[str]] = []
        self.first = True

    def __call__(self, session: Session, items: Sequence[str]) -> list[str]:
        self.batches.append(list(items))
        if self.gate is not None and self.first:
            self.first = False
            assert self.gate.wait(10)
        rows = [{"id": i, "type": "t", "created": T0, "outcome": "o", "payload": {}} for i in items]
        insert_new(session, StripeEvent, rows, key="id")
        if any(i.startswith("boom") for i in items):
            raise ValueError("a poisoned item")
        return [i.upper() for i in items]


def committer(store: Store, **options: Any) -> GroupCommitter[str, str, Session]:
    return GroupCommitter(transaction=session_scope, apply_batch=store, name="test-gc", **options)


def submit_all(gc: GroupCommitter[str, str, Session], items: list[str]) -> list[Future[str]]:
    pool = ThreadPoolExecutor(max_workers=len(items))
    futures = [pool.submit(gc.submit, item) for item in items]
    pool.shutdown(wait=False)
    return futures


def test_the_submitting_thread_commits_its_own_batch_and_no_thread_is_started(db):
    threads = set(threading.enumerate())
    applied_in: list[threading.Thread] = []

    def apply(session: Session, items: Sequence[str]) -> list[str]:
        applied_in.append(threading.current_thread())
        return Store()(session, items)

    gc = GroupCommitter(transaction=session_scope, apply_batch=apply, name="test-gc")

    assert gc.submit("a") == "A"
    assert applied_in == [threading.current_thread()]  # no hand-off to another thread
    assert set(threading.enumerate()) == threads
    gc.close()
    assert set(threading.enumerate()) == threads


def test_items_waiting_together_are_committed_in_one_transaction(db):
    gate = threading.Event()
    store = Store(gate)
    gc = committer(store)
    first = submit_all(gc, ["first"])
    wait_until(lambda: gc.running == 1, "the first batch runs")
    rest = submit_all(gc, [f"item{n}" for n in range(10)])
    wait_until(lambda: gc.pending == 10, "ten items wait")

    gate.set()

    assert [f.result(10) for f in first + rest] == ["FIRST"] + [f"ITEM{n}" for n in range(10)]
    assert [len(b) for b in store.batches] == [1, 10]
    assert stored_ids() == {"first"} | {f"item{n}" for n in range(10)}
    stats = gc.stats
    assert (stats.items, stats.transactions, stats.batched, stats.largest_batch) == (11, 2, 1, 10)
    gc.close()


def test_a_failing_item_is_refused_alone_and_nothing_of_it_is_stored(db):
    gate = threading.Event()
    store = Store(gate)
    gc = committer(store)
    first = submit_all(gc, ["first"])
    wait_until(lambda: gc.running == 1, "the first batch runs")
    items = ["ok1", "boom", "ok2"]
    futures = submit_all(gc, items)
    wait_until(lambda: gc.pending == 3, "three items wait")

    gate.set()

    assert first[0].result(10) == "FIRST"
    assert futures[0].result(10) == "OK1"
    assert futures[2].result(10) == "OK2"
    with pytest.raises(ValueError, match="poisoned"):
        futures[1].result(10)
    assert store.batches[1:] == [items, ["ok1"], ["boom"], ["ok2"]]  # the batch, then each
    assert stored_ids() == {"first", "ok1", "ok2"}
    assert gc.stats.fallbacks == 1
    gc.close()


def test_a_failing_batch_of_one_is_not_run_twice(db):
    store = Store()
    gc = committer(store)

    with pytest.raises(ValueError, match="poisoned"):
        gc.submit("boom")

    assert store.batches == [["boom"]]
    assert stored_ids() == set()
    gc.close()


def test_a_result_is_released_only_once_its_item_is_committed(db):
    gc = committer(Store())

    for n in range(20):
        assert gc.submit(f"a{n}") == f"A{n}"
        assert f"a{n}" in stored_ids()  # another session sees it: committed
    gc.close()


def test_after_commit_reports_the_committed_items_but_not_a_refused_one(db):
    gate = threading.Event()
    reported: list[tuple[list[str], list[str]]] = []
    gc = committer(Store(gate), after_commit=lambda i, r: reported.append((list(i), list(r))))
    first = submit_all(gc, ["first"])
    wait_until(lambda: gc.running == 1, "the first batch runs")
    rest = submit_all(gc, ["ok", "boom"])
    wait_until(lambda: gc.pending == 2, "two items wait")

    gate.set()
    first[0].result(10)
    rest[0].result(10)
    wait_until(lambda: len(reported) == 2, "both transactions are reported")

    assert reported == [(["first"], ["FIRST"]), (["ok"], ["OK"])]
    gc.close()


def test_two_committers_apply_a_second_batch_while_the_first_waits(db):
    gate = threading.Event()
    store = Store(gate)
    gc = committer(store, committers=2)
    first = submit_all(gc, ["first"])
    wait_until(lambda: gc.running == 1, "the first batch runs")

    assert gc.submit("second") == "SECOND"  # while the first is held at the gate

    gate.set()
    assert first[0].result(10) == "FIRST"
    gc.close()


def test_close_finishes_the_queued_items_then_refuses_new_ones(db):
    gate = threading.Event()
    gc = committer(Store(gate))
    futures = submit_all(gc, ["first"])
    wait_until(lambda: gc.running == 1, "the first batch runs")
    futures += submit_all(gc, ["queued1", "queued2"])
    wait_until(lambda: gc.pending == 2, "two items wait")
    closing = threading.Thread(target=gc.close)
    closing.start()

    gate.set()
    closing.join(10)

    assert [f.result(10) for f in futures] == ["FIRST", "QUEUED1", "QUEUED2"]
    with pytest.raises(CommitterClosed):
        gc.submit("late")
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(StripeEvent)) == 3


def test_many_threads_hammering_one_committer_all_get_their_results():
    """Hand-overs racing the submitting threads (a lead handed to an item whose thread has not
    yet begun to wait): every item is settled exactly once, none hangs, none errs."""
    from contextlib import nullcontext

    def apply(_session: Any, items: Sequence[int]) -> list[int]:
        return [item * 2 for item in items]

    gc: GroupCommitter[int, int, Session] = GroupCommitter(
        transaction=lambda: nullcontext(None),  # type: ignore[arg-type,return-value]
        apply_batch=apply,
    )
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        for _ in range(3):
            with ThreadPoolExecutor(max_workers=16) as pool:
                results = list(pool.map(gc.submit, range(4000), timeout=60))
            assert results == [i * 2 for i in range(4000)]
    finally:
        sys.setswitchinterval(previous)
    assert gc.stats.items == 12000
    assert gc.stats.batched > 0
