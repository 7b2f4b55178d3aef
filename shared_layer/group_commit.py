"""Group commit: many threads' work items in one database transaction, one commit for all.

A request thread calls `GroupCommitter.submit(item)` and blocks until the item's outcome is
durable. A committer thread (started on the first submit, never at import) takes every item
that is waiting (up to `max_batch`), runs `apply_batch` on them inside one transaction and
commits; then it releases each waiter with its own result. A transaction per item costs its
round trips and a WAL flush each; a batch shares them. With `committers` > 1, a second batch
is applied while the first one waits on the database (they must take their locks in one
order, so that they wait on each other rather than deadlock).

If a batch's transaction fails, it is rolled back whole and each item is run again in a
transaction of its own (`apply_batch` with that one item): the item that fails gets its
exception, the others their results, and nothing of the failed one is stored. A batch of one
that fails is not run twice. Results are handed out only after the commit, so a waiter that
answers 2xx never reports work that could still be lost.

`close()` stops taking items, lets the committers finish what is queued, and joins them;
`submit` after `close` raises. After a fork the child starts committers of its own.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from typing import Generic, TypeVar

from sqlalchemy.orm import Session

__all__ = ["CommitterClosed", "GroupCommitStats", "GroupCommitter"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


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


@dataclass
class _Waiting(Generic[T, R]):
    item: T
    future: Future[R]


class GroupCommitter(Generic[T, R]):
    """Batches items from many threads into one transaction each (see the module docstring).

    `transaction()` opens one transaction (commit on normal exit, rollback on an exception,
    as `shared_layer.database.session_scope` does); `apply_batch(session, items)` does the
    items' work in it and returns one result per item, in order. `after_commit(items,
    results)`, if given, runs in the committer once the waiters of committed items are
    released (a fallback reports each item that succeeded): for what must only happen once
    the results are durable and need not delay the answers, a log line, say.
    """

    def __init__(
        self,
        *,
        transaction: Callable[[], AbstractContextManager[Session]],
        apply_batch: Callable[[Session, Sequence[T]], Sequence[R]],
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
        self._threads: list[threading.Thread] = []
        self._pid = os.getpid()
        self._closed = False
        self._running = 0
        self._stats = GroupCommitStats()

    @property
    def stats(self) -> GroupCommitStats:
        with self._cond:
            return self._stats

    @property
    def pending(self) -> int:
        """Items waiting for a committer."""
        with self._cond:
            return len(self._queue)

    @property
    def running(self) -> int:
        """Items in a transaction now (not yet settled)."""
        with self._cond:
            return self._running

    def submit(self, item: T) -> R:
        """Run `item` in the next batch; its result once committed, or its exception."""
        future: Future[R] = Future()
        with self._cond:
            if self._closed:
                raise CommitterClosed(f"{self._name} is closed")
            self._ensure_threads()
            self._queue.append(_Waiting(item, future))
            self._cond.notify()
        return future.result()

    def close(self, timeout: float | None = 30.0) -> None:
        """Refuse new items, finish the queued ones, and stop the committer threads."""
        with self._cond:
            self._closed = True
            threads = list(self._threads)
            self._cond.notify_all()
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(timeout)
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

    def _ensure_threads(self) -> None:
        """Start the committers on first use (called under the lock); again after a fork."""
        if self._pid != os.getpid():  # a forked child: the parent's threads are not here
            self._pid, self._threads, self._queue = os.getpid(), [], []
        self._threads = [t for t in self._threads if t.is_alive()]
        while len(self._threads) < self._committers:
            thread = threading.Thread(
                target=self._run, name=f"{self._name}-{len(self._threads)}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def _run(self) -> None:
        for batch in self._batches():
            try:
                self._commit(batch)
            except BaseException as exc:  # never leave a waiter hanging
                for waiting in batch:
                    if not waiting.future.done():
                        waiting.future.set_exception(exc)
                raise

    def _batches(self) -> Iterator[list[_Waiting[T, R]]]:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:  # closed and drained
                    return
                batch = self._queue[: self._max_batch]
                del self._queue[: self._max_batch]
                self._running += len(batch)
            yield batch

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
            outcomes: list[R | Exception] = []
            for waiting in batch:
                try:
                    outcomes.extend(self._run_in_transaction([waiting.item]))
                except Exception as one_exc:
                    outcomes.append(one_exc)
            self._settle(batch, outcomes, fallback=True)
            return
        self._settle(batch, results, committed=True)

    def _run_in_transaction(self, items: list[T]) -> Sequence[R]:
        with self._transaction() as session:
            results = self._apply_batch(session, items)
            if len(results) != len(items):
                raise RuntimeError(f"apply_batch gave {len(results)} results for {len(items)}")
        return results

    def _report(self, items: Sequence[T], outcomes: Sequence[R | Exception]) -> None:
        if self._after_commit is None:
            return
        committed = [
            (i, o) for i, o in zip(items, outcomes, strict=True) if not isinstance(o, Exception)
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
        outcomes: Sequence[R | Exception],
        *,
        committed: bool = False,
        fallback: bool = False,
    ) -> None:
        with self._cond:
            self._running -= len(batch)
            s = self._stats
            self._stats = GroupCommitStats(
                items=s.items + len(batch),
                transactions=s.transactions + committed,
                batched=s.batched + (committed and len(batch) > 1),
                largest_batch=max(s.largest_batch, len(batch) if committed else 0),
                fallbacks=s.fallbacks + fallback,
            )
        for waiting, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, Exception):
                waiting.future.set_exception(outcome)
            else:
                waiting.future.set_result(outcome)
        self._report([w.item for w in batch], outcomes)
