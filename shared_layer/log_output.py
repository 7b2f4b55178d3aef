"""Where log lines go: stdout, several lines to a write rather than a system call each.

Every HTTP request writes its access line. Written alone, each line is a `write(2)` during
which the request's thread lets go of the GIL and then queues to take it back behind the other
request threads; under load that cost more than making the line (measured on
stripe_webhook: 17 % more events/s with no access line at all). So `HeldLinesHandler` holds
lines below WARNING in memory and writes what it holds in one go when:

- `LOG_FLUSH_SECONDS` (default 0.5) have passed since the first line it holds;
- 64 KiB are held;
- a line at WARNING or above is logged (it goes out at once, after the lines before it);
- the process exits (`logging.shutdown` flushes every handler) or forks.

`LOG_FLUSH_SECONDS=0` writes every line as it is logged (the tests do, to read them back at
once). What a crash that skips the exit handlers (SIGKILL, a segfault) can lose is the INFO
lines of the last `LOG_FLUSH_SECONDS`, as API-call metrics lose their last unwritten batch.
Where the platform gives an instance no CPU between requests, held lines wait for the next
request or for shutdown.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import weakref
from contextlib import suppress

__all__ = ["DEFAULT_FLUSH_SECONDS", "HeldLinesHandler"]

DEFAULT_FLUSH_SECONDS = 0.5
_FLUSH_BYTES = 64 * 1024


def _flush_seconds() -> float:
    """`LOG_FLUSH_SECONDS`, read when a line is logged (so a test may change it); a value that
    is not a number of seconds >= 0 is the default, not a failure to log."""
    raw = os.environ.get("LOG_FLUSH_SECONDS")
    if raw is None:
        return DEFAULT_FLUSH_SECONDS
    try:
        seconds = float(raw)
    except ValueError:
        return DEFAULT_FLUSH_SECONDS
    return seconds if seconds >= 0 else DEFAULT_FLUSH_SECONDS


class HeldLinesHandler(logging.Handler):
    """Formats each record to a line and writes held lines to whatever `sys.stdout` is at the
    time of the write (a test's capture, a worker's pipe); see the module for when."""

    def __init__(self) -> None:
        super().__init__()
        self._held: list[str] = []
        self._held_bytes = 0
        self._timer: threading.Timer | None = None
        _live.add(self)

    def emit(self, record: logging.LogRecord) -> None:  # called with the handler's lock held
        try:
            line = self.format(record) + "\n"
        except Exception:
            self.handleError(record)
            return
        self._held.append(line)
        self._held_bytes += len(line)
        hold = _flush_seconds()
        if hold == 0 or record.levelno >= logging.WARNING or self._held_bytes >= _FLUSH_BYTES:
            self._write()
        elif self._timer is None:
            self._timer = threading.Timer(hold, self.flush)
            self._timer.daemon = True
            self._timer.name = "stratus-log-flush"
            self._timer.start()

    def flush(self) -> None:
        self.acquire()
        try:
            self._write()
        finally:
            self.release()

    def held(self) -> int:
        """Lines logged but not written yet."""
        return len(self._held)

    def _write(self) -> None:
        """Write what is held; the lock is held."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._held:
            return
        text = "".join(self._held)
        self._held.clear()
        self._held_bytes = 0
        with suppress(ValueError, OSError):  # stdout closed at exit: nowhere left to write
            sys.stdout.write(text)
            sys.stdout.flush()

    def _forget_in_child(self) -> None:
        """After a fork: the parent wrote what was held; the timer thread did not come along."""
        self._held.clear()
        self._held_bytes = 0
        self._timer = None


_live: weakref.WeakSet[HeldLinesHandler] = weakref.WeakSet()


def _before_fork() -> None:
    for handler in list(_live):
        handler.flush()


def _after_fork_in_child() -> None:
    for handler in list(_live):
        handler._forget_in_child()


os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
