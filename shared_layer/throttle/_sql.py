"""Counters in the database (`throttle_counters`): the store when `REDIS_URL` is not set.

`take` is one short transaction: an upsert per key that locks its row (inserting a missing
one) and returns it, then an UPDATE per key that counts the attempt; `settle`, after the
guarded work succeeded, is one more, an UPDATE per key (forgetting a key resets its row: rows
are never deleted while in use, only by the cleanup job once forgotten). Keys come sorted and
every statement touches one row, so concurrent calls lock rows in one order and wait for each
other instead of deadlocking (a statement over several rows locks them in its scan's order).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from shared_layer.sql import as_datetime, transaction
from shared_layer.throttle._core import Key

__all__ = ["SqlStore", "delete_expired_counters"]


class SqlStore:
    def take(self, keys: Sequence[Key], now: datetime) -> float:
        counts: dict[str, int] = {}
        wait = 0.0
        with transaction() as db:
            for key in keys:  # one row per statement, so the locks come in the keys' order
                row = db.one(
                    "INSERT INTO throttle_counters (key, attempts, blocked_until, expires_at)"
                    " VALUES (:key, 0, NULL, :now)"
                    " ON CONFLICT (key) DO UPDATE SET attempts = throttle_counters.attempts"
                    " RETURNING attempts, blocked_until, expires_at",
                    {"key": key.id, "now": now},
                )
                assert row is not None, "an upsert returns its row"
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
        forgotten = {key.id for key in forget}
        with transaction() as db:
            for key in sorted([*give_back, *forget], key=lambda k: k.id):  # `take`'s order
                attempts = (
                    "0"
                    if key.id in forgotten
                    else "CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END"
                )
                db.execute(
                    f"UPDATE throttle_counters SET attempts = {attempts}, blocked_until = NULL"  # noqa: S608 - ours
                    " WHERE key = :key AND expires_at > :now",
                    {"key": key.id, "now": now},
                )


def delete_expired_counters(*, now: datetime) -> int:
    """Delete the counters nobody has touched for their memory (the cleanup job calls this).

    On PostgreSQL it passes over rows an attempt holds right now (`SKIP LOCKED`): waiting for
    them, while holding the others it deletes, could close a cycle with that attempt."""
    with transaction() as db:
        if db.dialect == "sqlite":  # one writer at a time: nothing to skip
            return db.execute(
                "DELETE FROM throttle_counters WHERE expires_at <= :now", {"now": now}
            )
        return db.execute(
            "DELETE FROM throttle_counters WHERE key IN (SELECT key FROM throttle_counters"
            " WHERE expires_at <= :now FOR UPDATE SKIP LOCKED)",
            {"now": now},
        )
