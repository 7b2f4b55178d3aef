"""Counters in the database (`throttle_counters`): the store when `REDIS_URL` is not set.

`take` is one short transaction: an upsert that locks the keys' rows (inserting the missing
ones) and returns them, then an UPDATE per key that counts the attempt. Keys come sorted, so
concurrent attempts lock rows in one order and wait for each other instead of deadlocking.
`settle`, after the guarded work succeeded, is one more.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from shared_layer.sql import as_datetime, transaction
from shared_layer.throttle._core import Key

__all__ = ["SqlStore", "delete_expired_counters"]


class SqlStore:
    def take(self, keys: Sequence[Key], now: datetime) -> float:
        if not keys:
            return 0.0
        params: dict[str, object] = {"now": now, **_names(keys)}
        values = [f"(:k{i}, 0, NULL, :now)" for i in range(len(keys))]
        with transaction() as db:
            rows = db.all(
                "INSERT INTO throttle_counters (key, attempts, blocked_until, expires_at)"  # noqa: S608 - placeholders only
                f" VALUES {', '.join(values)}"
                " ON CONFLICT (key) DO UPDATE SET attempts = throttle_counters.attempts"
                " RETURNING key, attempts, blocked_until, expires_at",
                params,
            )
            stored = {row["key"]: row for row in rows}
            counts: dict[str, int] = {}
            wait = 0.0
            for key in keys:
                row = stored[key.id]
                if as_datetime(row["expires_at"]) <= now:  # forgotten: starts over
                    counts[key.id] = 0
                    continue
                counts[key.id] = row["attempts"]
                if row["blocked_until"] is not None:
                    blocked_until = as_datetime(row["blocked_until"])
                    wait = max(wait, (blocked_until - now).total_seconds())
            if wait > 0:
                return wait
            for key in keys:
                attempts = counts[key.id] + 1
                delay = key.limit.delay(attempts)
                db.execute(
                    "UPDATE throttle_counters SET attempts = :attempts,"
                    " blocked_until = :blocked_until, expires_at = :expires_at WHERE key = :key",
                    {
                        "key": key.id,
                        "attempts": attempts,
                        "blocked_until": now + timedelta(seconds=delay) if delay else None,
                        "expires_at": now + timedelta(seconds=key.limit.memory(attempts)),
                    },
                )
        return 0.0

    def settle(self, *, give_back: Sequence[Key], forget: Sequence[Key], now: datetime) -> None:
        if not (give_back or forget):
            return
        with transaction() as db:
            if forget:
                db.execute(
                    f"DELETE FROM throttle_counters WHERE key IN ({_placeholders(len(forget))})",  # noqa: S608
                    _names(forget),
                )
            if give_back:
                db.execute(
                    "UPDATE throttle_counters SET"  # noqa: S608 - placeholders only
                    " attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END,"
                    " blocked_until = NULL"
                    f" WHERE key IN ({_placeholders(len(give_back))}) AND expires_at > :now",
                    {**_names(give_back), "now": now},
                )


def _placeholders(count: int) -> str:
    return ", ".join(f":k{i}" for i in range(count))


def _names(keys: Sequence[Key]) -> dict[str, object]:
    return {f"k{i}": key.id for i, key in enumerate(keys)}


def delete_expired_counters(*, now: datetime) -> int:
    """Delete the counters nobody has touched for their memory (the cleanup job calls this)."""
    with transaction() as db:
        return db.execute("DELETE FROM throttle_counters WHERE expires_at <= :now", {"now": now})
