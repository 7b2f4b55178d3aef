"""Group commit: many threads' work items in one database transaction, one commit for all.

A request thread calls `GroupCommitter.submit(item)` and blocks until the item's outcome is
durable. There is no committer thread: the submitting thread that finds fewer than
`committers` batches in flight leads one itself: it takes every item that is waiting (up to
`max_batch`; its own is among them), runs `apply_batch` on them inside one transaction and
commits; then it releases each waiter with its own result and hands the lead to the first
item that arrived meanwhile, whose thread commits the next batch with its own item in it. A
transaction per item costs its round trips and a WAL flush each; a batch shares them, and
leading from a request thread saves the two thread wake-ups a dedicated committer costs per
batch. With `committers` > 1, a second batch is applied while the first one waits on the
database (they must take their locks in one order, so that they wait on each other rather
than deadlock).

If a batch's transaction fails, it is rolled back whole and each item is run again in a
transaction of its own (`apply_batch` with that one item): the item that fails gets its
exception, the others their results, and nothing of the failed one is stored. A batch of one
that fails is not run twice. Results are handed out only after the commit, so a waiter that
answers 2xx never reports work that could still be lost.

`close()` stops taking items and waits until what is queued is committed; `submit` after
`close` raises. After a fork the child starts with no batch in flight and nothing queued.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from typing import Generic, TypeVar, cast

__all__ = ["CommitterClosed", "GroupCommitStats", "GroupCommitter"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")
D = TypeVar("D")  # what a transaction gives its work to run on: a session, a connection


class CommitterClosed(RuntimeError):
    """`submit` after `close()`: the process is shutting down."""


@dataclass(frozen=True)
class GroupCommitStats:
    """What a committer did since it was made."""

    items: int = 0  # items settled (a result or an exception)
    transactions: int = 0  # batch transactions that committed
    batched: int = 0  # ... of them with more than one item
    largest_batch: int = 0
    fallbacks: int = 0  # batches rolled back and re-run one item per transaction


class _Waiting(Generic[T, R]):
    """An item and its thread's wake-up: a lock held from the start, released once, when the
    item is settled or its thread is to lead `batch` (cheaper than a Future's Condition)."""

    __slots__ = ("batch", "error", "item", "result", "settled", "wake")

    def __init__(self, item: T) -> None:
        self.item = item
        self.wake = threading.Lock()
        self.wake.acquire()
        self.batch: list[_Waiting[T, R]] | None = None
        self.result: R | None = None
        self.error: BaseException | None = None
        self.settled = False


class GroupCommitter(Generic[T, R, D]):
    """Batches items from many threads into one transaction each (see the module docstring).

    `transaction()` opens one transaction (commit on normal exit, rollback on an exception,
    as `shared_layer.database.session_scope` does); `apply_batch(db, items)` does the
    items' work in it and returns one result per item, in order. `after_commit(items,
    results)`, if given, runs in the leading thread once the waiters of committed items are
    released (a fallback reports each item that succeeded): for what must only happen once
    the results are durable and need not delay the answers, a log line, say.
    """

    def __init__(
        self,
        *,
        transaction: Callable[[], AbstractContextManager[D]],
        apply_batch: Callable[[D, Sequence[T]], Sequence[R]],
        max_batch: int = 64,
        committers: int = 1,
        after_commit: Callable[[Sequence[T], Sequence[R]], None] | None = None,
        name: str = "group-commit",
    ) -> None:
        if max_batch < 1 or committers < 1:
            raise ValueError("max_batch and committers must be at least 1")
        self._transaction = transaction
        self._apply_batch = apply_batch
        self._max_batch = max_batch
        self._committers = committers
        self._after_commit = after_commit
        self._name = name
        self._cond = threading.Condition()
        self._queue: list[_Waiting[T, R]] = []
        self._pid = os.getpid()
        self._closed = False
        self._leading = 0  # batches in flight
        self._running = 0
        self._counts = [0, 0, 0, 0, 0]  # GroupCommitStats' fields, in order

    @property
    def stats(self) -> GroupCommitStats:
        with self._cond:
            return GroupCommitStats(*self._counts)

    @property
    def pending(self) -> int:
        """Items waiting for a batch."""
        with self._cond:
            return len(self._queue)

    @property
    def running(self) -> int:
        """Items in a transaction now (not yet settled)."""
        with self._cond:
            return self._running

    def submit(self, item: T) -> R:
        """Run `item` in the next batch; its result once committed, or its exception."""
        waiting: _Waiting[T, R] = _Waiting(item)
        with self._cond:
            if self._closed:
                raise CommitterClosed(f"{self._name} is closed")
            if self._pid != os.getpid():  # a forked child: the parent's batches are not here
                self._pid, self._queue, self._leading, self._running = os.getpid(), [], 0, 0
            queued = self._leading >= self._committers
            if queued:
                self._queue.append(waiting)
            else:  # then nothing waits: lead a batch of one
                self._leading += 1
                self._running += 1
                waiting.batch = [waiting]
        if queued:
            # Settled, or handed the lead. Always wait on the lock, even if the lead was handed
            # over before this line (the batch already set): its one release must be consumed
            # here, or settling this item would release an unlocked lock.
            waiting.wake.acquire()
        if waiting.batch is not None:
            self._lead(waiting.batch)
        if waiting.error is not None:
            raise waiting.error
        return cast(R, waiting.result)

    def close(self, timeout: float | None = 30.0) -> None:
        """Refuse new items and wait until the queued ones are committed."""
        with self._cond:
            self._closed = True
            self._cond.wait_for(lambda: not self._queue and not self._leading, timeout)
        stats = self.stats
        logger.info(
            "%s closed: %d items in %d transactions (%d of several items, the largest %d), "
            "%d fallbacks",
            self._name,
            stats.items,
            stats.transactions,
            stats.batched,
            stats.largest_batch,
            stats.fallbacks,
            extra={"group_commit": asdict(stats)},
        )

    def _lead(self, batch: list[_Waiting[T, R]]) -> None:
        """Commit `batch`, settle its items, then hand the lead on (or give it up)."""
        try:
            self._commit(batch)
        except BaseException as exc:  # never leave a waiter hanging
            unsettled = [w for w in batch if not w.settled]
            self._settle(unsettled, [exc] * len(unsettled))
            raise
        finally:
            with self._cond:
                nxt = self._queue[: self._max_batch]
                del self._queue[: self._max_batch]
                if nxt:
                    self._running += len(nxt)
                    nxt[0].batch = nxt
                else:
                    self._leading -= 1
                    if self._closed:
                        self._cond.notify_all()
            if nxt:
                nxt[0].wake.release()

    def _commit(self, batch: list[_Waiting[T, R]]) -> None:
        try:
            results = self._run_in_transaction([w.item for w in batch])
        except Exception as exc:
            if len(batch) == 1:
                self._settle(batch, [exc])
                return
            logger.warning(
                "%s: a batch of %d failed (%s); running its items one per transaction",
                self._name,
                len(batch),
                type(exc).__name__,
            )
            outcomes: list[R | BaseException] = []
            for waiting in batch:
                try:
                    outcomes.extend(self._run_in_transaction([waiting.item]))
                except Exception as one_exc:
                    outcomes.append(one_exc)
            self._settle(batch, outcomes, fallback=True)
            return
        self._settle(batch, results, committed=True)

    def _run_in_transaction(self, items: list[T]) -> Sequence[R]:
        with self._transaction() as db:
            results = self._apply_batch(db, items)
            if len(results) != len(items):
                raise RuntimeError(f"apply_batch gave {len(results)} results for {len(items)}")
        return results

    def _report(self, items: Sequence[T], outcomes: Sequence[R | BaseException]) -> None:
        if self._after_commit is None:
            return
        committed = [
            (i, o) for i, o in zip(items, outcomes, strict=True) if not isinstance(o, BaseException)
        ]
        if not committed:
            return
        try:
            self._after_commit([i for i, _ in committed], [o for _, o in committed])
        except Exception:  # the work is committed; a failing report must not undo that
            logger.exception("%s: after_commit failed", self._name)

    def _settle(
        self,
        batch: list[_Waiting[T, R]],
        outcomes: Sequence[R | BaseException],
        *,
        committed: bool = False,
        fallback: bool = False,
    ) -> None:
        size = len(batch)
        with self._cond:
            self._running -= size
            c = self._counts
            c[0] += size
            c[1] += committed
            c[2] += committed and size > 1
            c[3] = max(c[3], size if committed else 0)
            c[4] += fallback
        for waiting, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                waiting.error = outcome
            else:
                waiting.result = outcome
            waiting.batch, waiting.settled = None, True
            waiting.wake.release()  # held: by its creation, or by the thread that leads
        self._report([w.item for w in batch], outcomes)
