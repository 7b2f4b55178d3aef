"""shared_layer.batch_rows on PostgreSQL with tables the size a live service has: a batch finds
its rows by primary key, so its cost does not grow with the tables (a plan that reads a whole
table is counted in `pg_stat_xact_user_tables.seq_scan`, within the transaction itself)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy import Connection, Engine, Table, text

from shared_layer.batch_rows import insert_new_and_lock, update_rows
from shared_layer.models import StripeEvent, Subscription

EVENTS: Table = StripeEvent.__table__  # type: ignore[assignment]
SUBSCRIPTIONS: Table = Subscription.__table__  # type: ignore[assignment]
STORED = 20_000  # rows in each table before the batch


def _fill(engine: Engine) -> None:
    user_id = uuid.uuid4()
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO users (id, email, password_hash, is_active, is_admin, password_legacy,"
                " created_at, updated_at)"
                " VALUES (:id, 'many@example.com', 'x', true, false, false, now(), now())"
            ),
            {"id": user_id},
        )
        conn.execute(
            text(
                "INSERT INTO subscriptions (id, user_id, stripe_customer_id, status, version, "
                "cancel_at_period_end, created_at, updated_at) SELECT 'sub_' || g, :user_id, "
                "'cus_many', 'active', 1, false, now(), now() FROM generate_series(1, :n) g"
            ),
            {"user_id": user_id, "n": STORED},
        )
        conn.execute(
            text(
                "INSERT INTO stripe_events (id, type, created, livemode, outcome, payload, "
                "received_at) SELECT 'evt_' || g, 'ping', now(), false, 'ignored', "
                "CAST('{}' AS json), now() FROM generate_series(1, :n) g"
            ),
            {"n": STORED},
        )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("ANALYZE subscriptions, stripe_events"))


def _table_scans(conn: Connection) -> dict[str, int]:
    rows = conn.execute(
        text(
            "SELECT relname, seq_scan FROM pg_stat_xact_user_tables "
            "WHERE relname IN ('subscriptions', 'stripe_events')"
        )
    )
    return {str(name): int(scans or 0) for name, scans in rows}


def test_a_batch_reads_and_writes_large_tables_by_key_not_by_scanning_them(pg: Engine) -> None:
    _fill(pg)
    now = datetime.now(UTC)
    events = [
        {
            "id": f"evt_new_{i}",
            "type": "customer.subscription.updated",
            "created": now,
            "livemode": False,
            "outcome": "received",
            "payload": {"n": i},
            "received_at": now,
        }
        for i in range(3)
    ]
    subscriptions = ["sub_7", "sub_70", "sub_700"]

    with pg.begin() as conn:
        before = _table_scans(conn)
        inserted, (found,) = insert_new_and_lock(
            conn,
            EVENTS,
            [*events, {**events[0], "id": "evt_5"}],  # evt_5 is stored already
            key="id",
            locks=[(SUBSCRIPTIONS, subscriptions, ("id", "status", "version"))],
        )
        update_rows(
            conn,
            [
                (SUBSCRIPTIONS, [{"id": s, "status": "past_due", "version": 2} for s in found]),
                (EVENTS, [{"id": e["id"], "outcome": "applied"} for e in events]),
            ],
        )
        after = _table_scans(conn)
        stored = conn.execute(
            text("SELECT id, status, version FROM subscriptions WHERE status = 'past_due'")
        ).all()

    assert inserted == {e["id"] for e in events}
    assert sorted(found) == sorted(subscriptions)
    assert sorted(tuple(r) for r in stored) == [(s, "past_due", 2) for s in sorted(subscriptions)]
    assert after == before, f"a whole table was read: {before} -> {after}"
