"""Throttling of repeated failures — password guessing at sign-in now — through one interface
whatever stores the counters.

    attempt = get_throttle().attempt(Key(LIMIT, subject), ..., what="failed sign-ins")
    ...  # the guarded work: a password check
    attempt.succeeded(forget=[LIMIT])  # on success only; a failure stays counted

A `Limit` lets a few attempts through free, then makes each further one wait longer (doubling,
capped): never a lockout, since every wait ends. A blocked attempt is refused at once with
`RateLimited` (429, Retry-After) and counts nothing, so it costs no password check.

Counters live in Redis when `REDIS_URL` is set, else in the database (`throttle_counters`,
whose forgotten rows the cleanup job deletes); both count atomically across instances.
"""

from __future__ import annotations

from functools import lru_cache

from shared_layer.config import get_settings
from shared_layer.throttle._core import Attempt, Key, Limit, Store, Throttle
from shared_layer.throttle._sql import SqlStore, delete_expired_counters

__all__ = [
    "Attempt",
    "Key",
    "Limit",
    "Store",
    "Throttle",
    "delete_expired_counters",
    "get_throttle",
    "reset_throttle",
]


@lru_cache(maxsize=1)
def get_throttle() -> Throttle:
    store: Store
    if get_settings().redis_url:
        from shared_layer.throttle._redis import RedisStore

        store = RedisStore()
    else:
        store = SqlStore()
    return Throttle(store)


def reset_throttle() -> None:
    """Forget the store (tests, and after the settings change)."""
    get_throttle.cache_clear()
