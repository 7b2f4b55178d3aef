"""Limits, keys and the one interface every counter store serves."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from shared_layer.errors import RateLimited

MAX_DOUBLINGS = 30  # past this the cap has long been reached; keeps 2**n small


@dataclass(frozen=True)
class Limit:
    """How many attempts on one subject are free, and how the wait grows past them: the first
    attempt over `free` makes the next one wait `base_seconds`, each further one twice as long,
    never more than `cap_seconds`. A subject with no attempt for `forget_seconds` starts over."""

    name: str
    free: int
    cap_seconds: float
    base_seconds: float = 1.0
    forget_seconds: float = 3600.0

    def delay(self, attempts: int) -> float:
        """The wait that the `attempts`-th attempt imposes on the next one (0 while free)."""
        over = attempts - self.free
        if over <= 0:
            return 0.0
        return float(min(self.cap_seconds, self.base_seconds * 2 ** min(over - 1, MAX_DOUBLINGS)))

    def memory(self, attempts: int) -> float:
        """How long a counter is kept after an attempt: a blocked subject is never forgotten
        before its wait ends."""
        return max(self.forget_seconds, self.delay(attempts))


@dataclass(frozen=True)
class Key:
    """One limit applied to one subject (an address, an IP, a pair of them). The stored id is
    a digest: a counter store never holds the address or IP it counts."""

    limit: Limit
    subject: str

    @property
    def id(self) -> str:
        digest = hashlib.sha256(self.subject.encode("utf-8", "surrogatepass")).hexdigest()
        return f"{self.limit.name}:{digest[:40]}"


class Store(Protocol):
    """Where counters live (the database, or Redis); each call is atomic across instances."""

    def take(self, keys: Sequence[Key], now: datetime) -> float:
        """Count one attempt on every key and return 0, unless one is waiting at `now`: then
        count nothing and return the seconds until the longest wait ends."""

    def settle(self, *, give_back: Sequence[Key], forget: Sequence[Key], now: datetime) -> None:
        """After a success: drop the `forget` keys' counters; on the `give_back` keys uncount
        the attempt (a success is not a failure) and lift the wait counting it imposed (an
        earlier one had ended, or the attempt would not have passed)."""


@dataclass
class Attempt:
    """An attempt that was let through and counted; tell it how it went."""

    store: Store
    keys: tuple[Key, ...]

    def succeeded(self, *, forget: Iterable[Limit] = ()) -> None:
        """The attempt succeeded: the keys of the `forget` limits start over (e.g. the account
        just signed in), the others only give this attempt back (e.g. its IP)."""
        dropped = set(forget)
        self.store.settle(
            give_back=[k for k in self.keys if k.limit not in dropped],
            forget=[k for k in self.keys if k.limit in dropped],
            now=datetime.now(UTC),
        )


class Throttle:
    """Counts attempts before the work they guard, so that a burst of concurrent requests
    cannot all pass before any is counted; a blocked attempt is refused and counts nothing."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def attempt(self, *keys: Key, what: str = "attempts") -> Attempt:
        """Count an attempt on `keys`; `RateLimited` (429 with Retry-After) while any waits."""
        ordered = tuple(sorted(keys, key=lambda k: k.id))  # one lock order for every caller
        wait = self.store.take(ordered, datetime.now(UTC))
        if wait > 0:
            seconds = math.ceil(wait)
            raise RateLimited(f"too many {what}; try again in {seconds} s", retry_after=seconds)
        return Attempt(self.store, ordered)
