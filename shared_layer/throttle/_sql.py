"""Counters in the database (`throttle_counters`): the store when `REDIS_URL` is not set.

`take` is one short transaction: an upsert that locks the keys' rows (inserting the missing
ones) and returns them, then one UPDATE per key. Keys come sorted, so concurrent attempts lock
rows in one order and wait for each other instead of deadlocking.
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
        params: dict[str, object] = {"now": now}
        values = []
        for i, key in enumerate(keys):
            params[f"k{i}"] = key.id
            values.append(f"(:k{i}, 0, NULL, :now)")
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

    def give_back(self, keys: Sequence[Key], now: datetime) -> None:
        if not keys:
            return
        with transaction() as db:
            for key in keys:
                db.execute(
                    "UPDATE throttle_counters SET"
                    " attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END,"
                    " blocked_until = NULL"
                    " WHERE key = :key AND expires_at > :now",
                    {"key": key.id, "now": now},
                )

    def forget(self, keys: Sequence[Key]) -> None:
        if not keys:
            return
        names = {f"k{i}": key.id for i, key in enumerate(keys)}
        with transaction() as db:
            db.execute(
                "DELETE FROM throttle_counters"  # noqa: S608 - placeholders only
                f" WHERE key IN ({', '.join(':' + name for name in names)})",
                names,
            )


def delete_expired_counters(*, now: datetime) -> int:
    """Delete the counters nobody has touched for their memory (the cleanup job calls this)."""
    with transaction() as db:
        return db.execute("DELETE FROM throttle_counters WHERE expires_at <= :now", {"now": now})
